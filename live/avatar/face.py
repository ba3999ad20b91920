"""CPU face renderer: landmarks -> smooth displacement fields -> one ``cv2.remap`` a frame.

Everything expensive is precomputed from the portrait pack: the output grid (a zoomed crop of
the photo), a head mask, and unit displacement fields for the jaw, the lip corners and each
eyelid. A frame is then a few multiply-adds on float maps, one remap, and two small
overlays: the inner mouth (dark, a hint of lower teeth and tongue, shadowed lip edges) in
the gap the jaw opens, and a lash line over a closing eye.

How the mouth opens without smearing: the maps are split along the seam where the lips (or
the upper teeth and lower lip) meet. Above it the upper lip rises a little, below it the lower
lip and chin drop; the opening profile falls to zero at the mouth corners, so outside the
mouth the field stays smooth and cheeks stretch instead of tearing. The strip between the
two halves is exactly the polygon the inner-mouth overlay covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from live.avatar.portrait import PortraitPack
from live.avatar.visemes import MouthShape

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]

WIDE_GAIN = 0.18  # corners move out by this share of the half mouth width at wide=1
ROUND_GAIN = 0.28  # ... and in by this share at round=1
DROP_GAIN = 0.07  # lower lip drop at open=1, share of the face height
RISE_GAIN = 0.012  # upper lip rise at open=1


@dataclass(frozen=True, slots=True)
class FaceState:
    """What one frame shows. Head offsets are photo pixels, the angle radians."""

    mouth: MouthShape
    blink_l: float = 0.0
    blink_r: float = 0.0
    head_dx: float = 0.0
    head_dy: float = 0.0
    head_angle: float = 0.0


def _smoothstep(e0: float | F32, e1: float | F32, x: F32) -> F32:
    t = np.clip((x - e0) / (np.asarray(e1) - e0 + 1e-6), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _interp_curve(pts: F32, xs: F32) -> F32:
    """y of a roughly horizontal contour at xs (clamped beyond its ends)."""
    order = np.argsort(pts[:, 0])
    return np.interp(xs, pts[order, 0], pts[order, 1]).astype(np.float32)


@dataclass
class _Box:
    """A region of the output frame: rows y0:y1, columns x0:x1."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y0, self.y1), slice(self.x0, self.x1)


class FaceRenderer:
    """Renders RGBA frames of the portrait for a ``FaceState``; not thread-safe."""

    def __init__(self, pack: PortraitPack, *, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._pack = pack
        img = pack.image
        self._src: U8 = np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_RGB2RGBA))
        ih = img.shape[0]

        # framing: the pack's square crop, stretched to the output aspect, kept in the photo
        cx0, cy0, side = pack.crop
        scale = side / width  # photo px per output px
        crop_h = height * scale
        cy = cy0 + side / 2
        y0 = float(np.clip(cy - crop_h / 2, 0.0, max(ih - crop_h, 0.0)))
        self._scale = scale
        self._origin = (cx0, y0)
        us = (np.arange(width, dtype=np.float32) + 0.5) * scale + cx0 - 0.5
        vs = (np.arange(height, dtype=np.float32) + 0.5) * scale + y0 - 0.5
        self._gx, self._gy = np.meshgrid(us, vs)
        self._map_x = np.empty_like(self._gx)
        self._map_y = np.empty_like(self._gy)
        self._tmp = np.empty_like(self._gx)

        p = pack
        oval = p.group("face_oval")
        self._face_h = face_h = float(p.point("chin")[1] - p.point("forehead")[1])
        face_c = oval.mean(axis=0)
        half_w = float(oval[:, 0].max() - oval[:, 0].min()) / 2

        # head mask: 1 on head and hair, fading out over the neck and background
        hc_x, hc_y = float(face_c[0]), float(face_c[1]) - 0.12 * face_h
        rx, ry = 1.35 * half_w, 0.78 * face_h
        r = np.sqrt(((self._gx - hc_x) / rx) ** 2 + ((self._gy - hc_y) / ry) ** 2)
        self._head_mask: F32 = (1.0 - _smoothstep(0.85, 1.45, r)).astype(np.float32)
        piv_x, piv_y = float(p.point("chin")[0]), float(p.point("chin")[1]) + 0.25 * face_h
        self._pivot = (piv_x, piv_y)
        self._rot_x: F32 = (self._head_mask * (self._gy - piv_y)).astype(np.float32)
        self._rot_y: F32 = (-self._head_mask * (self._gx - piv_x)).astype(np.float32)

        self._build_mouth(face_h, half_w)
        self._eyes = [self._build_eye("eye_l"), self._build_eye("eye_r")]

    # ---- geometry -------------------------------------------------------------------

    def _to_out(self, x: float, y: float) -> tuple[float, float]:
        return ((x - self._origin[0]) / self._scale, (y - self._origin[1]) / self._scale)

    def _box(self, x0: float, y0: float, x1: float, y1: float) -> _Box:
        a = self._to_out(x0, y0)
        b = self._to_out(x1, y1)
        return _Box(
            max(math.floor(a[0]) - 2, 0), max(math.floor(a[1]) - 2, 0),
            min(math.ceil(b[0]) + 2, self.width), min(math.ceil(b[1]) + 2, self.height),
        )

    def _lip_profile(self, x: F32) -> F32:
        t = (x - self._mouth_cx) / self._mouth_hw
        return np.clip(1.0 - t * t, 0.0, 1.0).astype(np.float32) ** 0.75

    def _build_mouth(self, face_h: float, face_half_w: float) -> None:
        p = self._pack
        # the opening spans the inner lip corners; the outer corners only stretch
        ml, mr = p.points[78], p.points[308]
        self._mouth_cx = float(ml[0] + mr[0]) / 2
        self._mouth_hw = float(mr[0] - ml[0]) / 2
        self._seam = p.group("lower_lip_inner").astype(np.float32)
        upper_outer = p.group("upper_lip_outer")
        lower_outer = p.group("lower_lip_outer")
        chin_y = float(p.point("chin")[1])
        subnasale_y = float(p.point("subnasale")[1])
        self._drop = DROP_GAIN * face_h
        self._rise = RISE_GAIN * face_h
        jaw_hw = 0.85 * face_half_w
        chin_x = float(p.point("chin")[0])

        box = self._box(
            chin_x - jaw_hw, subnasale_y, chin_x + jaw_hw, chin_y + 0.4 * face_h
        )
        self._mouth_box = box
        gx, gy = self._gx[box.slices], self._gy[box.slices]
        seam_y = _interp_curve(self._seam, gx)
        p_lip = self._lip_profile(gx)
        tj = (gx - chin_x) / jaw_hw
        p_jaw = 0.85 * np.clip(1.0 - tj * tj, 0.0, 1.0).astype(np.float32)
        below = gy >= seam_y
        d = gy - seam_y
        h_low = max(chin_y - float(seam_y.mean()), 1.0)
        a = 1.0 - _smoothstep(0.15 * h_low, 0.8 * h_low, d)
        fade = 1.0 - _smoothstep(chin_y, chin_y + 0.35 * face_h, gy)
        low = self._drop * (p_lip * a + p_jaw * (1.0 - a)) * fade
        up_w = 1.0 - _smoothstep(0.35 * (seam_y - subnasale_y), (seam_y - subnasale_y), -d)
        up = -self._rise * p_lip * up_w
        self._f_open: F32 = np.where(below, low, up).astype(np.float32)

        # corners in/out: a horizontal field centred on the mouth
        lip_h = float(lower_outer[:, 1].max() - upper_outer[:, 1].min())
        g = np.exp(
            -(((gx - self._mouth_cx) / (1.25 * self._mouth_hw)) ** 2)
            - (((gy - float(seam_y.mean())) / (1.1 * lip_h)) ** 2)
        ).astype(np.float32)
        # fade to zero at the box edges, so the field never ends in a visible step
        bh, bw = g.shape
        ry = np.minimum(np.arange(bh), np.arange(bh)[::-1]).astype(np.float32)[:, None]
        rx = np.minimum(np.arange(bw), np.arange(bw)[::-1]).astype(np.float32)[None, :]
        g *= _smoothstep(0.0, 8.0, ry) * _smoothstep(0.0, 8.0, rx)
        self._f_side: F32 = ((gx - self._mouth_cx) * g).astype(np.float32)

        # polygon sample columns for the inner-mouth overlay
        self._poly_x = np.linspace(
            float(ml[0]), float(mr[0]), 28, dtype=np.float32
        )
        self._poly_seam = _interp_curve(self._seam, self._poly_x)
        self._poly_p = self._lip_profile(self._poly_x)
        self._poly_g = np.exp(
            -(((self._poly_x - self._mouth_cx) / (1.25 * self._mouth_hw)) ** 2)
        ).astype(np.float32)

    def _build_eye(self, name: str) -> tuple[_Box, F32, F32, F32]:
        p = self._pack
        up = p.group(f"{name}_upper").astype(np.float32)
        lo = p.group(f"{name}_lower").astype(np.float32)
        xa = float(min(up[:, 0].min(), lo[:, 0].min()))
        xb = float(max(up[:, 0].max(), lo[:, 0].max()))
        opening = float((_interp_curve(lo, up[:, 0]) - up[:, 1]).max())
        m_up = max(1.3 * opening, 2.0)
        m_lo = max(0.6 * opening, 1.0)
        box = self._box(xa - 1, float(up[:, 1].min()) - m_up - 1, xb + 1,
                        float(lo[:, 1].max()) + m_lo + 1)
        gx, gy = self._gx[box.slices], self._gy[box.slices]
        yu = _interp_curve(up, gx)
        yl = np.maximum(_interp_curve(lo, gx), yu)
        inside = (gx >= xa) & (gx <= xb)
        yc = yu + 0.78 * (yl - yu)
        top = yu - m_up
        f = gy.copy()
        band_u = inside & (gy >= top) & (gy < yc)
        f_u = top + (gy - top) * (m_up / (yc - top + 1e-6))
        f = np.where(band_u, f_u, f)
        bot = yl + m_lo
        band_l = inside & (gy >= yc) & (gy < bot)
        f_l = yl + (gy - yc) * (m_lo / (bot - yc + 1e-6))
        f = np.where(band_l, f_l, f)
        field = (gy - f).astype(np.float32)
        lash_x = np.linspace(xa, xb, 14, dtype=np.float32)
        lash_u = _interp_curve(up, lash_x)
        lash_y = lash_u + 0.78 * (np.maximum(_interp_curve(lo, lash_x), lash_u) - lash_u)
        return box, field, lash_x, lash_y.astype(np.float32)

    # ---- per frame ------------------------------------------------------------------

    def mouth_box(self) -> tuple[int, int, int, int]:
        """Output-pixel box (x0, y0, x1, y1) around the lips, for tests and measurements."""
        p = self._pack
        uo, lo = p.group("upper_lip_outer"), p.group("lower_lip_outer")
        b = self._box(float(uo[:, 0].min()), float(uo[:, 1].min()), float(lo[:, 0].max()),
                      float(lo[:, 1].max()) + self._drop)
        return (b.x0, b.y0, b.x1, b.y1)

    def render_idle(self) -> U8:
        """The portrait at rest: mouth shut, eyes open, head still."""
        return self.render(FaceState(MouthShape()))

    def render(self, state: FaceState) -> U8:
        """One H x W x 4 RGBA frame (a new array)."""
        mx, my, tmp = self._map_x, self._map_y, self._tmp
        # head: content moves by (dx, dy) and turns about the neck; backward map subtracts
        np.multiply(self._head_mask, -state.head_dx, out=tmp)
        np.add(self._gx, tmp, out=mx)
        np.multiply(self._head_mask, -state.head_dy, out=tmp)
        np.add(self._gy, tmp, out=my)
        if state.head_angle:
            mx += state.head_angle * self._rot_x
            my += state.head_angle * self._rot_y

        mouth = state.mouth
        j = float(np.clip(mouth.open, 0.0, 1.0))
        side = WIDE_GAIN * float(np.clip(mouth.wide, 0, 1)) - ROUND_GAIN * float(
            np.clip(mouth.round, 0, 1)
        )
        sl = self._mouth_box.slices
        if j > 0.0:
            my[sl] -= j * self._f_open
        if side != 0.0:
            mx[sl] -= side * self._f_side
        for (box, field, _, _), b in zip(self._eyes, (state.blink_l, state.blink_r), strict=True):
            if b > 0.0:
                my[box.slices] -= float(min(b, 1.0)) * field

        frame: U8 = cv2.remap(  # type: ignore[assignment]
            self._src, mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        if j * self._drop > 0.4:
            self._draw_inner_mouth(frame, state, j, side)
        for (_, _, lx, ly), b in zip(self._eyes, (state.blink_l, state.blink_r), strict=True):
            if b > 0.55:
                self._draw_lash(frame, state, lx, ly, (b - 0.55) / 0.45)
        return frame

    def _head_forward(self, x: F32, y: F32, st: FaceState) -> tuple[F32, F32]:
        """Where photo points land after head motion (the face moves rigidly, mask ~ 1)."""
        px, py = self._pivot
        c, s = math.cos(st.head_angle), math.sin(st.head_angle)
        dx, dy = x - px, y - py
        return (
            (px + c * dx - s * dy + st.head_dx).astype(np.float32),
            (py + s * dx + c * dy + st.head_dy).astype(np.float32),
        )

    def _draw_inner_mouth(self, frame: U8, st: FaceState, j: float, side: float) -> None:
        xs = self._poly_x
        shift_x = side * (xs - self._mouth_cx) * self._poly_g
        top_y = self._poly_seam - j * self._rise * self._poly_p
        bot_y = self._poly_seam + j * self._drop * self._poly_p
        tx, ty = self._head_forward(xs + shift_x, top_y, st)
        bx, by = self._head_forward(xs + shift_x, bot_y, st)
        ox, oy, sc = self._origin[0], self._origin[1], self._scale
        top = np.stack([(tx - ox) / sc, (ty - oy) / sc], axis=1)
        bot = np.stack([(bx - ox) / sc, (by - oy) / sc], axis=1)
        poly = np.concatenate([top, bot[::-1]], axis=0)

        x0 = max(int(poly[:, 0].min()) - 4, 0)
        y0 = max(int(poly[:, 1].min()) - 4, 0)
        x1 = min(int(poly[:, 0].max()) + 5, self.width)
        y1 = min(int(poly[:, 1].max()) + 5, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        h, w = y1 - y0, x1 - x0
        mask = np.zeros((h, w), np.uint8)
        pts = np.round((poly - [x0, y0]) * 8).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_AA, shift=3)
        m = mask.astype(np.float32) / 255.0

        # per-column top/bottom of the gap -> vertical position v (0 at teeth, 1 at lip)
        cols = np.arange(w, dtype=np.float32) + x0
        order = np.argsort(top[:, 0])
        t_col = np.interp(cols, top[order, 0], top[order, 1])
        b_col = np.interp(cols, bot[order, 0], bot[order, 1])
        rows = (np.arange(h, dtype=np.float32) + y0)[:, None]
        v = np.clip((rows - t_col) / np.maximum(b_col - t_col, 1.0), 0.0, 1.0)
        u = np.clip(np.abs(cols - (top[0, 0] + top[-1, 0]) / 2) / max(
            (top[-1, 0] - top[0, 0]) / 2, 1.0), 0.0, 1.0)[None, :]
        gap_px = float((b_col - t_col).max())
        dark = np.array([52, 20, 18], np.float32)
        tongue = np.array([150, 70, 68], np.float32)
        teeth = np.array([182, 172, 162], np.float32)
        tw = _smoothstep(0.35, 0.9, v) * (1.0 - u * u) * 0.8 * min(1.0, gap_px / 9.0)
        col = dark * (1.0 - tw[..., None]) + tongue * tw[..., None]
        # back of the mouth is darker toward the corners
        col *= (1.0 - 0.45 * u * u)[..., None]
        # lower teeth: a thin band just above the lower lip, centre only, once wide enough
        teeth_w = (_smoothstep(0.72, 0.86, v) * (1.0 - _smoothstep(0.93, 1.0, v))
                   * (1.0 - _smoothstep(0.3, 0.55, u))
                   * 0.5 * min(1.0, max(0.0, (gap_px - 5.0) / 8.0)))
        col = col * (1.0 - teeth_w[..., None]) + teeth * teeth_w[..., None]

        roi = frame[y0:y1, x0:x1, :3].astype(np.float32)
        # lips shade a little where they meet the opening
        shadow = cv2.GaussianBlur(m, (0, 0), 1.2 + 0.3 * gap_px / 10.0)
        shade = 1.0 - 0.35 * min(1.0, gap_px / 6.0) * np.clip(shadow - m, 0.0, 1.0)
        out = roi * (shade * (1.0 - m))[..., None] + col * m[..., None]
        frame[y0:y1, x0:x1, :3] = np.clip(out, 0, 255).astype(np.uint8)

    def _draw_lash(self, frame: U8, st: FaceState, lx: F32, ly: F32, alpha: float) -> None:
        x, y = self._head_forward(lx, ly, st)
        ox, oy, sc = self._origin[0], self._origin[1], self._scale
        pts = np.stack([(x - ox) / sc, (y - oy) / sc], axis=1)
        x0 = max(int(pts[:, 0].min()) - 3, 0)
        y0 = max(int(pts[:, 1].min()) - 3, 0)
        x1 = min(int(pts[:, 0].max()) + 4, self.width)
        y1 = min(int(pts[:, 1].max()) + 4, self.height)
        if x1 <= x0 or y1 <= y0:
            return
        roi = frame[y0:y1, x0:x1]
        over = roi.copy()
        ipts = np.round((pts - [x0, y0]) * 8).astype(np.int32)
        thick = max(1, round(0.6 / sc))
        cv2.polylines(over, [ipts], False, (48, 32, 26, 255), thick, cv2.LINE_AA, shift=3)
        a = float(np.clip(alpha, 0.0, 1.0)) * 0.65
        cv2.addWeighted(over, a, roi, 1.0 - a, 0.0, dst=roi)
