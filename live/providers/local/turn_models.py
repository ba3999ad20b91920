"""Voice activity (Silero) and LiveKit's local end-of-turn model, loaded once per process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from live.providers.registry import ProviderContext

if TYPE_CHECKING:
    from livekit.agents import vad as lk_vad

logger = logging.getLogger(__name__)


def get_vad(ctx: ProviderContext) -> lk_vad.VAD:
    """Silero VAD (its ONNX ships in the plugin), loaded once per process."""

    def build() -> lk_vad.VAD:
        from livekit.plugins import silero

        return silero.VAD.load(min_silence_duration=0.55)

    return ctx.cached("local.vad.silero", build)


def init_turn_detector(ctx: ProviderContext) -> bool:
    """Load LiveKit's local end-of-turn model (native, weights inside the wheel) once."""

    def build() -> bool:
        try:
            from livekit.local_inference import init_eot
        except ImportError:
            logger.warning("livekit-local-inference is missing: end of turn falls back to VAD")
            return False
        init_eot()
        return True

    return ctx.cached("local.eot.v1-mini", build)
