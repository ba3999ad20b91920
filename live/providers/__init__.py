"""Providers: LiveKit Agents STT/LLM/TTS and avatar sessions, chosen by config name.

Importing this package imports the module of every provider in the catalogue
(``config/catalog.py``), so each registers itself (and the LiveKit plugins register on the
main thread, as they require). A provider whose plugin is not installed is reported when it
is chosen, not here. Heavy local engines are imported inside their factories.
"""

import importlib

from config.catalog import PROVIDERS
from live.providers.registry import (
    KINDS,
    Avatar,
    ProviderContext,
    ProviderError,
    create,
    entry,
    mark_missing,
    names,
    register,
)

for _provider in PROVIDERS:
    if _provider.module is None:
        continue
    try:
        importlib.import_module(_provider.module)
    except ModuleNotFoundError as _exc:
        if not _provider.hosted or not (_exc.name or "").startswith("livekit.plugins"):
            raise
        mark_missing(_provider.slot, _provider.name, _exc.name or _provider.module)

__all__ = [
    "KINDS",
    "Avatar",
    "ProviderContext",
    "ProviderError",
    "create",
    "entry",
    "names",
    "register",
]
