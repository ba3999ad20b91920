"""Local talking-face avatar: a portrait animated on the CPU, published via LiveKit avatars.

See ``session.LocalAvatarSession`` (what the worker starts), ``runner.run_avatar_participant``
(the avatar as its own participant), ``face.FaceRenderer`` (the renderer) and
``portrait_import.import_portrait`` (custom portraits).
"""

from live.avatar.generator import FaceVideoGenerator, FrameInfo
from live.avatar.options import LocalAvatarOptions
from live.avatar.runner import run_avatar_participant
from live.avatar.session import LocalAvatarSession

__all__ = [
    "FaceVideoGenerator",
    "FrameInfo",
    "LocalAvatarOptions",
    "LocalAvatarSession",
    "run_avatar_participant",
]
