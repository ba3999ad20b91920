"""Portrait packs: the committed default, the provider entry, and importing a new photo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from config.settings import Settings
from live.avatar.face import FaceRenderer
from live.avatar.options import portrait_pack
from live.avatar.portrait import DEFAULT_PACK, PortraitError, load_pack
from live.avatar.portrait_import import DEFAULT_VENV, import_portrait, venv_python
from live.avatar.session import LocalAvatarSession
from live.providers import local_avatar  # noqa: F401  (registers ("avatar", "local"))
from live.providers.registry import ProviderContext, ProviderError, create


@pytest.mark.unit
def test_default_pack_is_committed_with_its_licence() -> None:
    pack = load_pack()
    assert pack.image.shape == (512, 512, 3)
    assert pack.points.shape == (478, 2)
    assert "public domain" in pack.licence.lower()
    assert (DEFAULT_PACK / "LICENSE.txt").is_file()
    # the landmarks sit on the face: mouth corners left/right of the nose, below the eyes
    ml, mr, nose = pack.point("mouth_l"), pack.point("mouth_r"), pack.point("nose_tip")
    assert ml[0] < nose[0] < mr[0]
    assert pack.group("eye_l_upper")[:, 1].mean() < nose[1] < ml[1]


@pytest.mark.unit
@pytest.mark.parametrize(("w", "h"), [(512, 512), (640, 360), (320, 320)])
def test_renderer_handles_other_sizes(w: int, h: int) -> None:
    frame = FaceRenderer(load_pack(), width=w, height=h).render_idle()
    assert frame.shape == (h, w, 4)
    assert frame[..., :3].std() > 20  # a picture, not a blank


@pytest.mark.unit
def test_provider_builds_a_local_avatar(settings: Settings, tmp_path: Path) -> None:
    ctx = ProviderContext(settings)
    avatar = create("avatar", "local", settings.avatar, ctx)
    assert isinstance(avatar, LocalAvatarSession)
    assert avatar.options.mode == "in-process"
    assert (avatar.options.width, avatar.options.height, avatar.options.fps) == (
        settings.avatar.width, settings.avatar.height, settings.avatar.fps)
    # the pack checked and kept by the provider is the one every renderer draws: one copy
    kept = ctx.shared[f"avatar.local.pack:{avatar.options.portrait or ''}"]
    assert kept is portrait_pack(avatar.options)
    bad = settings.avatar.model_copy(update={"avatar_id": str(tmp_path / "nope")})
    with pytest.raises(ProviderError, match="portrait pack"):
        create("avatar", "local", bad, ctx)


@pytest.mark.unit
def test_alignment_callback_before_start_is_harmless() -> None:
    LocalAvatarSession().alignment_callback([], 100, 22050)


@pytest.mark.slow
@pytest.mark.skipif(not venv_python(DEFAULT_VENV).exists(),
                    reason="portrait venv not created (make setup / first import creates it)")
def test_import_finds_the_face_in_a_new_photo(tmp_path: Path) -> None:
    """A mirrored, resized astronaut: the imported landmarks mirror the committed ones."""
    src = load_pack()
    photo = cv2.cvtColor(src.image[:, ::-1], cv2.COLOR_RGB2BGR)
    photo = cv2.resize(photo, (768, 768), interpolation=cv2.INTER_CUBIC)
    path = tmp_path / "me.jpg"
    cv2.imwrite(str(path), photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    pack = load_pack(import_portrait(path, tmp_path / "pack"))
    k = 768 / 512
    # the subject's left mouth corner is now on the image left
    expect = np.array([(511 - src.point("mouth_r")[0]) * k, src.point("mouth_r")[1] * k])
    assert np.linalg.norm(pack.point("mouth_l") - expect) < 4
    FaceRenderer(pack, width=256, height=256).render_idle()


@pytest.mark.slow
def test_import_rejects_a_photo_without_a_face(tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((200, 200, 3), 128, np.uint8))
    if not venv_python(DEFAULT_VENV).exists():
        pytest.skip("portrait venv not created")
    with pytest.raises(PortraitError, match="no face"):
        import_portrait(blank, tmp_path / "pack")
