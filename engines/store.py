"""The per-process model store: each model loaded once, one way, by every user in the process.

The live worker's job process fills it in prewarm (``live.providers.local.prewarm``) and its
sessions build their providers from it; the Celery summariser, ``avatar call`` and the
benchmarks load the same engines through the same ``get_*`` functions. Each use passes its own
settings (the summariser's one-slot SmolLM2 without a host-RAM prompt cache, the caller's
whole-sentence voice); a use whose settings differ from the live agent's gets an engine of
its own under its own name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from config.settings import Settings, load_settings

T = TypeVar("T")


@dataclass
class ModelStore:
    """Loaded models by name (``local.stt.tiny.en``), and the settings they load with."""

    settings: Settings
    shared: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _building: dict[str, threading.Lock] = field(default_factory=dict, repr=False)

    def cached(self, key: str, build: Callable[[], T]) -> T:
        """Build once per process (thread-safe), then reuse.

        One lock per model: a fallback model loading in a thread (``live.providers.lazy``)
        never holds up an event loop asking for a model that is already there.
        """
        if key in self.shared:
            return self.shared[key]  # type: ignore[no-any-return]
        with self._lock:
            lock = self._building.setdefault(key, threading.Lock())
        with lock:
            if key not in self.shared:
                value = build()
                with self._lock:
                    self.shared[key] = value
            return self.shared[key]  # type: ignore[no-any-return]


_lock = threading.Lock()
_store: ModelStore | None = None


def process_models(settings: Settings | None = None) -> ModelStore:
    """This process's model store; the first caller's settings (else the environment's) hold."""
    global _store
    with _lock:
        if _store is None:
            _store = ModelStore(settings or load_settings())
        return _store
