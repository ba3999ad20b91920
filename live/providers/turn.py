"""Voice activity and end of turn, offline: Silero VAD plus LiveKit's local ``v1-mini`` model.

``TurnDetector(version="v1-mini")`` runs LiveKit's audio end-of-turn model in-process
(``livekit-local-inference``, weights inside the wheel): it never calls the cloud gateway.
The auto mode would pick the cloud ``v1`` model in dev mode, so the version is explicit.
Without the native package the session falls back to VAD-only endpointing.
"""

from __future__ import annotations

import logging
from typing import Any

from config.settings import Settings
from live.providers.local_models import get_vad, init_turn_detector
from live.providers.registry import ProviderContext

logger = logging.getLogger(__name__)


def turn_detector(ctx: ProviderContext) -> Any:
    """The local end-of-turn detector, or ``"vad"`` when it is not installed."""
    if not init_turn_detector(ctx):
        return "vad"
    from livekit.agents.inference.eot import TurnDetector

    return TurnDetector(version="v1-mini")


def turn_handling(settings: Settings, ctx: ProviderContext) -> dict[str, Any]:
    """``AgentSession`` keyword arguments for VAD, end of turn and interruptions.

    Use as ``AgentSession(stt=..., llm=..., tts=..., **turn_handling(settings, ctx))``.
    False-interruption resume is off: the avatar plays the agent's audio and cannot pause it.
    """
    limits = settings.limits
    return {
        "vad": get_vad(ctx),
        "aec_warmup_duration": limits.echo_guard_seconds or None,
        "turn_handling": {
            "turn_detection": turn_detector(ctx),
            "endpointing": {
                "min_delay": limits.endpointing_min_delay,
                "max_delay": limits.endpointing_max_delay,
            },
            "interruption": {
                "resume_false_interruption": False,
                "min_duration": limits.interruption_min_speech,
            },
        },
    }
