"""The model store of processes that are not LiveKit job processes.

A live worker's job process keeps its models in ``proc.userdata`` (its ``ProviderContext``,
filled by ``prewarm``). ``avatar call`` and the benchmarks load the same engines through the
same ``get_*`` functions, from this one per-process context: each model is loaded once per
process, one way, and each use passes its own settings (the caller's whole-sentence voice,
a benchmark's slots). The Celery summariser still loads SmolLM2 itself: ``tasks`` may not
import ``live``, so sharing this store needs the engines in a package of their own.
"""

from __future__ import annotations

import threading

from config.settings import Settings, load_settings
from live.providers.registry import ProviderContext

_lock = threading.Lock()
_context: ProviderContext | None = None


def process_models(settings: Settings | None = None) -> ProviderContext:
    """This process's model store; the first caller's settings (else the environment's) hold."""
    global _context
    with _lock:
        if _context is None:
            _context = ProviderContext(settings or load_settings())
        return _context
