"""Voice activity (Silero) and LiveKit's local end-of-turn model, loaded once per process."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from live.providers.registry import ProviderContext

if TYPE_CHECKING:
    from livekit.agents import vad as lk_vad

logger = logging.getLogger(__name__)


STT_MIN_SILENCE = 0.55  # the local STT's utterances: a hesitation stays one utterance
# Silero's own defaults, named: the local STT counts quiet windows by them (``quiet_after``)
VAD_ACTIVATION = 0.5
VAD_DEACTIVATION = 0.35


def get_vad(ctx: ProviderContext, min_silence: float = STT_MIN_SILENCE) -> lk_vad.VAD:
    """Silero VAD (its ONNX ships in the plugin), loaded once per process and silence rule.

    The session's VAD (``LIMITS__VAD_MIN_SILENCE``) says when a backchannel is over, and a
    paused reply resumes from there; by default it is the local STT's (0.55 s, so that a
    short pause does not cut an utterance in two), one model for both."""

    def build() -> lk_vad.VAD:
        from livekit.plugins import silero

        return silero.VAD.load(min_silence_duration=min_silence, activation_threshold=VAD_ACTIVATION,
                               deactivation_threshold=VAD_DEACTIVATION)

    key = "local.vad.silero" if min_silence == STT_MIN_SILENCE else f"local.vad.silero.{min_silence}"
    return ctx.cached(key, build)


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
