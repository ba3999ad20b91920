"""What a session spec may choose, given the operator's settings.

A spec comes from API callers, the admin form and room metadata: people who do not hold the
operator's keys. It may pick among what the operator configured (providers, named LLM
endpoints, shipped local models, portrait packs) and may end a session sooner than the
operator's limits, never later. Everything else is refused with the field named, before a
session is stored (web, webhook) and again before the worker builds anything.
"""

from __future__ import annotations

from pathlib import Path

from config import catalog
from config.session import SessionSpec, SpecError
from config.settings import PROJECT_ROOT, LLMSettings, Settings

BUILTIN_PACKS = ("astronaut",)
PACK_ASSETS = PROJECT_ROOT / "live" / "avatar" / "assets"  # live.avatar.portrait.ASSETS


def portrait_dirs(settings: Settings) -> list[Path]:
    """Where portrait packs a spec may name live (`avatar portrait import` writes the first)."""
    return [settings.var_dir / "portraits", PACK_ASSETS]


def local_pack(settings: Settings, name: str) -> Path | None:
    """The folder of the portrait pack `name`, if one of the pack folders holds it."""
    for folder in portrait_dirs(settings):
        candidate = folder / name
        if candidate.parent == folder and (candidate / "pack.json").is_file():
            return candidate
    return None


def spec_violations(spec: SessionSpec, settings: Settings) -> dict[str, str]:
    """Field -> why the operator's settings do not allow it (empty when the spec is fine)."""
    out: dict[str, str] = {}
    llm_models, whisper_models, voices = (
        catalog.local_models("llm"), catalog.local_models("stt"), catalog.local_voices()
    )
    llm_provider = spec.llm.provider or settings.llm.provider
    if spec.llm.endpoint is not None:
        if spec.llm.endpoint not in settings.llm.endpoints:
            known = ", ".join(sorted(settings.llm.endpoints)) or "none are configured"
            out["llm.endpoint"] = f"unknown endpoint {spec.llm.endpoint!r} (configured: {known})"
        elif llm_provider != "openai":
            out["llm.endpoint"] = "an endpoint needs the openai provider"
    if spec.llm.model is not None and llm_provider == "local" and spec.llm.model not in llm_models:
        out["llm.model"] = f"unknown local model; choose one of: {', '.join(llm_models)}"
    stt_provider = spec.stt.provider or settings.stt.provider
    if spec.stt.model is not None and stt_provider == "local" and spec.stt.model not in whisper_models:
        out["stt.model"] = f"unknown local model; choose one of: {', '.join(whisper_models)}"
    tts_provider = spec.tts.provider or settings.tts.provider
    if spec.tts.voice is not None and tts_provider == "local" and spec.tts.voice not in voices:
        out["tts.voice"] = f"unknown local voice; choose one of: {', '.join(voices)}"
    avatar_provider = spec.avatar.provider or settings.avatar.provider
    if (
        spec.avatar.avatar_id is not None
        and avatar_provider == "local"
        and local_pack(settings, spec.avatar.avatar_id) is None
    ):
        out["avatar.avatar_id"] = (
            "unknown portrait pack; import one with `avatar portrait import` "
            f"(shipped: {', '.join(BUILTIN_PACKS)})"
        )
    limits = settings.limits
    if spec.max_session_minutes is not None and spec.max_session_minutes > limits.max_session_minutes:
        out["max_session_minutes"] = (
            f"must be at most {limits.max_session_minutes:g} (the operator's limit)"
        )
    if (
        spec.idle_timeout_seconds is not None
        and spec.idle_timeout_seconds > limits.idle_timeout_seconds
    ):
        out["idle_timeout_seconds"] = (
            f"must be at most {limits.idle_timeout_seconds:g} (the operator's limit)"
        )
    return out


def enforce_spec(spec: SessionSpec, settings: Settings) -> None:
    """:raise SpecError: naming each field the operator's settings do not allow."""
    problems = spec_violations(spec, settings)
    if problems:
        raise SpecError(
            "session spec refused: " + "; ".join(f"{k}: {v}" for k, v in problems.items())
        )


def llm_base_url(spec: SessionSpec, settings: LLMSettings) -> str | None:
    """The base URL the session's LLM talks to: the configured one or a named endpoint."""
    if spec.llm.endpoint is None:
        return settings.base_url
    try:
        return settings.endpoints[spec.llm.endpoint]
    except KeyError:
        raise SpecError(f"llm.endpoint: unknown endpoint {spec.llm.endpoint!r}") from None


def session_limits(spec: SessionSpec, settings: Settings) -> tuple[float, float]:
    """(max minutes, idle seconds): the spec's when shorter, never above the operator's."""
    limits = settings.limits
    minutes = min(spec.max_session_minutes or limits.max_session_minutes, limits.max_session_minutes)
    idle = min(spec.idle_timeout_seconds or limits.idle_timeout_seconds, limits.idle_timeout_seconds)
    return minutes, idle
