"""Providers: LiveKit Agents STT/LLM/TTS and avatar sessions, chosen by config name.

Importing this package imports every provider module, so each registers itself (and the
LiveKit plugins register on the main thread, as they require).
"""

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
