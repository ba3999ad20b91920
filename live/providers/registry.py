"""One small registry: (slot, catalogue name) -> factory of a typed LiveKit Agents object.

Which providers exist, what they need and what they cost is the catalogue's
(``config/catalog.py``); this registry only maps each catalogue entry to the factory its module
registers. ``create`` returns ``stt.STT`` / ``llm.LLM`` / ``tts.TTS`` for those slots and LiveKit's
``AvatarSession`` for avatars (the local face and the hosted plugins' wrapper are both one), so
mypy catches a provider put in the wrong slot. A hosted
provider's factory receives its catalogue options model, with the key already resolved
(``Settings.api_key_for``); no provider module reads the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias, TypeVar, overload

from livekit.agents import llm, stt, tts
from livekit.agents.voice.avatar import AvatarSession

from config import catalog
from config.catalog import SLOTS, Slot
from engines import EngineError
from engines.store import ModelStore

Kind = Slot
KINDS: tuple[Kind, ...] = SLOTS

T = TypeVar("T")


class ProviderError(EngineError):
    """A provider cannot be built: unknown name, missing extra, vendor gone, bad option.

    A local engine's own :class:`~engines.EngineError` raised while a provider is built
    comes out of :func:`create` as this error (``engines`` cannot import ``live``).
    """


Avatar = AvatarSession
"""What the avatar slot builds: started once per session, before the session starts."""


# What a factory may use: the settings and the process's model store (``engines.store``), the
# one the worker's prewarm fills and every session of that process builds its providers from.
ProviderContext: TypeAlias = ModelStore


# A factory takes the slot's options (its catalogue options model for hosted providers, else
# the settings group, with per-session overrides applied) and the context.
Factory = Callable[[Any, ProviderContext], T]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    name: str
    factory: Factory[Any]
    provider: catalog.Provider

    @property
    def extra(self) -> str | None:
        return self.provider.extra

    @property
    def hosted(self) -> bool:
        return self.provider.hosted


_REGISTRY: dict[tuple[str, str], Entry] = {}
# Catalogue modules that could not be imported (their plugin is not installed): module name.
_MISSING: dict[tuple[str, str], str] = {}

# Modules whose install command is not the provider's extra.
INSTALL_HINTS = {
    pkg.module: pkg.install
    for p in catalog.PROVIDERS
    for pkg in p.packages
    if "--no-deps" in pkg.install
}


@overload
def register(
    kind: Literal["stt"], name: str, *, extra: str | None = ..., hosted: bool = ...
) -> Callable[[Factory[stt.STT]], Factory[stt.STT]]: ...
@overload
def register(
    kind: Literal["llm"], name: str, *, extra: str | None = ..., hosted: bool = ...
) -> Callable[[Factory[llm.LLM]], Factory[llm.LLM]]: ...
@overload
def register(
    kind: Literal["tts"], name: str, *, extra: str | None = ..., hosted: bool = ...
) -> Callable[[Factory[tts.TTS]], Factory[tts.TTS]]: ...
@overload
def register(
    kind: Literal["avatar"], name: str, *, extra: str | None = ..., hosted: bool = ...
) -> Callable[[Factory[Avatar]], Factory[Avatar]]: ...
def register(
    kind: Kind, name: str, *, extra: str | None = None, hosted: bool = False
) -> Callable[[Factory[Any]], Factory[Any]]:
    """Decorator: make ``factory`` the builder of provider ``name`` for ``kind``.

    The provider must be in the catalogue; ``extra``/``hosted`` are for providers that are
    not (tests register throw-away ones) and are otherwise taken from the catalogue.
    """

    def deco(factory: Factory[Any]) -> Factory[Any]:
        try:
            provider = catalog.get(kind, name)
        except catalog.UnknownProvider:
            provider = catalog.Provider(kind, name, name, hosted=hosted, module=None, extra=extra)
        _REGISTRY[(kind, name)] = Entry(kind, name, factory, provider)
        return factory

    return deco


def mark_missing(kind: Kind, name: str, module: str) -> None:
    """The provider's module could not be imported: ``create`` says what to install."""
    _MISSING[(kind, name)] = module


def missing_key(kind: Kind, name: str) -> str:
    """``avatar provider 'tavus' needs AVATAR__API_KEY or TAVUS_API_KEY``."""
    p = catalog.get(kind, name)
    also = f" or {p.vendor_env}" if p.vendor_env else ""
    return f"{kind} provider {name!r} needs {p.key_setting}{also}"


def names(kind: Kind) -> list[str]:
    return sorted(n for (k, n) in _REGISTRY if k == kind)


def _install_hint(provider: catalog.Provider, module: str | None) -> str:
    return INSTALL_HINTS.get(module or "") or (
        f'pip install -e ".[{provider.extra}]"' if provider.extra else "pip install -e ."
    )


def entry(kind: Kind, name: str) -> Entry:
    try:
        return _REGISTRY[(kind, name)]
    except KeyError:
        pass
    if (kind, name) in _MISSING:
        provider = catalog.get(kind, name)
        module = _MISSING[(kind, name)]
        raise ProviderError(
            f"{kind} provider {name!r} needs the module {module!r}: "
            f"run {_install_hint(provider, module)}"
        )
    raise ProviderError(
        f"unknown {kind} provider {name!r}; choose one of: {', '.join(names(kind))}"
    ) from None


def provider_options(e: Entry, options: Any, ctx: ProviderContext) -> Any:
    """A hosted provider's own options model, validated from the slot's group.

    The key is the group's only when the group is configured for this provider (a fallback
    or a session's override never hands one vendor's key to another), else the vendor's
    usual variable (``Settings.vendor_keys``).
    """
    model = e.provider.options
    if model is None or options is None:
        return options
    values = options.model_dump() if hasattr(options, "model_dump") else dict(vars(options))
    own_key = values.get("provider", e.name) == e.name and values.get("api_key") is not None
    if not own_key:
        values["api_key"] = ctx.settings.vendor_keys.get(e.name)
    return model.model_validate(values)


@overload
def create(kind: Literal["stt"], name: str, options: Any, ctx: ProviderContext) -> stt.STT: ...
@overload
def create(kind: Literal["llm"], name: str, options: Any, ctx: ProviderContext) -> llm.LLM: ...
@overload
def create(kind: Literal["tts"], name: str, options: Any, ctx: ProviderContext) -> tts.TTS: ...
@overload
def create(kind: Literal["avatar"], name: str, options: Any, ctx: ProviderContext) -> Avatar: ...
@overload
def create(kind: Kind, name: str, options: Any, ctx: ProviderContext) -> Any: ...
def create(kind: Kind, name: str, options: Any, ctx: ProviderContext) -> Any:
    """Build a provider; a missing optional dependency names the extra to install."""
    e = entry(kind, name)
    try:
        return e.factory(provider_options(e, options, ctx), ctx)
    except ModuleNotFoundError as exc:
        raise ProviderError(
            f"{kind} provider {name!r} needs the module {exc.name!r}: "
            f"run {_install_hint(e.provider, exc.name)}"
        ) from None
    except ProviderError:
        raise
    except EngineError as exc:
        raise ProviderError(str(exc)) from exc
