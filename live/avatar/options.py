"""Options shared by the in-process avatar and the avatar participant."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from livekit.agents.voice.avatar import AvatarOptions

from live.avatar.face import FaceRenderer
from live.avatar.portrait import PortraitPack, load_pack
from live.avatar.publish import DEFAULT_VIDEO_LEAD_S

Mode = Literal["in-process", "participant"]
DEFAULT_IDENTITY = "local-avatar"


@dataclass(frozen=True, kw_only=True)
class LocalAvatarOptions:
    """How the local avatar renders and where it publishes.

    ``portrait``: a portrait pack folder (None: the committed astronaut pack).
    ``mode``: ``in-process`` publishes from the agent participant (cheapest, and the only
    mode that gets phoneme timings); ``participant`` joins as its own participant the way
    hosted avatars do.
    """

    width: int = 512
    height: int = 512
    fps: int = 25
    sample_rate: int = 24000
    portrait: Path | None = None
    mode: Mode = "in-process"
    identity: str = DEFAULT_IDENTITY
    name: str = "Avatar"
    seed: int | None = None
    mouth_lead: float = DEFAULT_VIDEO_LEAD_S  # s each frame leaves before its sound

    def __post_init__(self) -> None:
        if not -0.2 <= self.mouth_lead <= 0.3:
            raise ValueError(f"mouth_lead must be within -0.2..0.3 s, got {self.mouth_lead}")

    def avatar_options(self) -> AvatarOptions:
        return AvatarOptions(
            video_width=self.width,
            video_height=self.height,
            video_fps=self.fps,
            audio_sample_rate=self.sample_rate,
            audio_channels=1,
        )


@lru_cache(maxsize=8)
def _pack(portrait: str) -> PortraitPack:
    return load_pack(portrait or None)


def portrait_pack(opts: LocalAvatarOptions) -> PortraitPack:
    """The options' portrait pack, loaded once per process (every renderer shares it)."""
    return _pack(str(opts.portrait) if opts.portrait else "")


def build_renderer(opts: LocalAvatarOptions) -> FaceRenderer:
    """A fresh renderer (it holds per-frame scratch buffers); the pack is loaded once."""
    return FaceRenderer(portrait_pack(opts), width=opts.width, height=opts.height)
