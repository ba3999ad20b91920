"""Portrait packs: one photo plus the face landmarks the renderer animates.

A pack is a folder holding ``portrait.png`` (RGB) and ``pack.json``: the 478 MediaPipe
FaceMesh points, named contours picked from them (lips, eyelids, jaw) and the derived
regions (mouth box, eye boxes, head ellipse, framing crop). Landmarks are found once, at
import time, in a separate environment (see ``portrait_import``); rendering needs only this
folder, numpy and OpenCV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

PACK_VERSION = 1
ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_PACK = ASSETS / "astronaut"

# MediaPipe FaceMesh indices, ordered from the image-left mouth corner to the image-right one
# (or along the contour). Image-left is the subject's right.
GROUPS: dict[str, list[int]] = {
    "upper_lip_outer": [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291],
    "upper_lip_inner": [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308],
    "lower_lip_inner": [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308],
    "lower_lip_outer": [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291],
    # eyes: image-left eye ("eye_l") and image-right eye ("eye_r"), corner to corner
    "eye_l_upper": [33, 246, 161, 160, 159, 158, 157, 173, 133],
    "eye_l_lower": [33, 7, 163, 144, 145, 153, 154, 155, 133],
    "eye_r_upper": [362, 398, 384, 385, 386, 387, 388, 466, 263],
    "eye_r_lower": [362, 382, 381, 380, 374, 373, 390, 249, 263],
    "brow_l": [70, 63, 105, 66, 107],
    "brow_r": [336, 296, 334, 293, 300],
    "face_oval": [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379,
                  378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127,
                  162, 21, 54, 103, 67, 109],
}
POINTS: dict[str, int] = {"chin": 152, "nose_tip": 1, "subnasale": 2, "forehead": 10,
                          "mouth_l": 61, "mouth_r": 291}

Array = npt.NDArray[np.float32]


class PortraitError(Exception):
    """A portrait pack is missing, malformed, or the photo has no usable face."""


@dataclass(frozen=True)
class PortraitPack:
    """An RGB photo and its landmark geometry, in photo pixel coordinates."""

    image: npt.NDArray[np.uint8]  # H x W x 3, RGB
    points: Array  # 478 x 2
    crop: tuple[float, float, float]  # framing square: x0, y0, side (photo pixels)
    source: str
    licence: str

    def group(self, name: str) -> Array:
        return self.points[GROUPS[name]]

    def point(self, name: str) -> Array:
        return self.points[POINTS[name]]

    @property
    def path_hint(self) -> str:
        return self.source


def framing_crop(points: Array, width: int, height: int) -> tuple[float, float, float]:
    """A square around head and shoulders: the face takes about 40% of the frame height."""
    oval = points[GROUPS["face_oval"]]
    x0, y0 = oval.min(axis=0)
    x1, y1 = oval.max(axis=0)
    face_h = float(y1 - y0)
    side = min(float(width), float(height), face_h / 0.42)
    cx = float(x0 + x1) / 2
    cy = float(y0 + y1) / 2 + 0.18 * side  # face a little above centre
    x = min(max(cx - side / 2, 0.0), width - side)
    y = min(max(cy - side / 2, 0.0), height - side)
    return (x, y, side)


def build_pack_json(raw: dict[str, Any], *, source: str, licence: str) -> dict[str, Any]:
    """Pack metadata from the landmark script's output (points in pixels)."""
    pts = np.asarray(raw["points"], dtype=np.float32)[:, :2]
    if pts.shape[0] < 468:
        raise PortraitError(f"expected 468+ FaceMesh points, got {pts.shape[0]}")
    w, h = int(raw["width"]), int(raw["height"])
    crop = framing_crop(pts, w, h)
    def rounded(a: Array) -> list[list[float]]:
        return [[round(float(x), 2), round(float(y), 2)] for x, y in a]

    regions = {name: rounded(pts[idx]) for name, idx in GROUPS.items()}
    return {
        "version": PACK_VERSION,
        "width": w,
        "height": h,
        "model": raw.get("model", "unknown"),
        "source": source,
        "licence": licence,
        "crop": [round(c, 2) for c in crop],
        "points": rounded(pts),
        "regions": regions,
    }


def write_pack(
    image_rgb: npt.NDArray[np.uint8], meta: dict[str, Any], out_dir: Path
) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_dir / "portrait.png"), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise PortraitError(f"cannot write {out_dir / 'portrait.png'}")
    (out_dir / "pack.json").write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    return out_dir


def load_pack(path: Path | str | None = None) -> PortraitPack:
    """Load a pack folder (default: the committed astronaut pack)."""
    folder = Path(path) if path else DEFAULT_PACK
    meta_path = folder / "pack.json"
    if not meta_path.is_file():
        raise PortraitError(f"not a portrait pack (no pack.json): {folder}")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != PACK_VERSION:
        raise PortraitError(f"unsupported portrait pack version {meta.get('version')!r}")
    bgr = cv2.imread(str(folder / "portrait.png"), cv2.IMREAD_COLOR)
    if bgr is None:
        raise PortraitError(f"cannot read {folder / 'portrait.png'}")
    rgb: npt.NDArray[np.uint8] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))  # type: ignore[assignment]
    pts = np.asarray(meta["points"], dtype=np.float32)
    if rgb.shape[:2] != (meta["height"], meta["width"]):
        raise PortraitError("portrait.png size does not match pack.json")
    x0, y0, side = (float(v) for v in meta["crop"])
    return PortraitPack(
        image=rgb, points=pts, crop=(x0, y0, side), source=str(meta.get("source", folder)),
        licence=str(meta.get("licence", "")),
    )
