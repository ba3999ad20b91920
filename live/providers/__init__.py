"""Providers: LiveKit Agents STT/LLM/TTS and avatar sessions, chosen by config name.

Importing this package imports every provider module, so each registers itself (and the
LiveKit plugins register on the main thread, as they require). Heavy local engines are
imported inside their factories, so a missing extra fails only when that provider is used.
"""

from live.providers import (  # noqa: F401  (imported to register)
    assemblyai,
    cartesia,
    hedra,
    local_avatar,
    local_llm,
    local_stt,
    local_tts,
    openai_llm,
    tavus,
)
from live.providers.registry import (
    KINDS,
    ProviderContext,
    ProviderError,
    create,
    entry,
    names,
    register,
)

__all__ = ["KINDS", "ProviderContext", "ProviderError", "create", "entry", "names", "register"]
