"""Turns settings plus a session's spec into LiveKit Agents components, through the registry.

Hosted slots get LiveKit Agents' fallback adapters with the configured local provider behind
them, so a vendor outage degrades the voice instead of ending the conversation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from livekit.agents import llm, stt, tts
from pydantic import BaseModel

from config.policy import enforce_spec, llm_base_url, local_pack
from config.session import SessionSpec
from config.settings import Settings
from live.providers import ProviderContext, ProviderError, create, entry
from live.providers.registry import Kind

logger = logging.getLogger(__name__)


def slot_options(group: BaseModel, override: BaseModel, **resolved: Any) -> Any:
    """The settings group with the session's non-empty choices applied.

    Only fields the settings group has are copied (a spec's `llm.endpoint` is a name, turned
    into a URL by the caller through ``resolved``), so a spec cannot add settings. A session
    that picks another provider does not take the configured one's key along (the registry
    uses that vendor's own variable).
    """
    fields = type(group).model_fields
    update = {k: v for k, v in override.model_dump(exclude_none=True).items() if k in fields}
    if "provider" in update and update["provider"] != getattr(group, "provider", None):
        update["api_key"] = None
    return group.model_copy(update={**update, **resolved})


@dataclass
class Components:
    stt: stt.STT
    llm: llm.LLM
    tts: tts.TTS
    stt_name: str
    llm_name: str
    tts_name: str
    avatar_chain: list[tuple[str, Any]]  # (provider name, options), tried in order


def _fallback(kind: Kind, name: str, ctx: ProviderContext) -> Any:
    """The fallback provider; a local one loads its models when first used (``lazy``)
    unless ``LIMITS__PRELOAD_FALLBACKS`` had the prewarm load them."""
    options = getattr(ctx.settings, kind)
    if not ctx.settings.limits.preload_fallbacks:
        from live.providers.lazy import deferred

        stand_in = deferred(kind, name, options, ctx)
        if stand_in is not None:
            return stand_in
    return create(kind, name, options, ctx)


def _with_fallback(kind: Kind, primary_name: str, opts: Any, ctx: ProviderContext, vad: Any) -> Any:
    primary: Any = create(kind, primary_name, opts, ctx)  # its class is checked by the adapter
    fallback_name = getattr(opts, "fallback", None)
    if not entry(kind, primary_name).hosted or not fallback_name or fallback_name == primary_name:
        return primary
    try:
        secondary: Any = _fallback(kind, fallback_name, ctx)
    except ProviderError as err:
        logger.warning("no %s fallback: %s", kind, err)
        return primary
    from live.providers import fallback as fb

    if kind == "stt":
        return fb.build_stt_with_fallback(primary, secondary, vad=vad)
    if kind == "llm":
        return fb.build_llm_with_fallback(primary, secondary)
    return fb.build_tts_with_fallback(primary, secondary)


async def load_fallbacks(comps: Components) -> Components:
    """Load, in a thread, a local provider that stands alone because the hosted one could not
    be built, and put the real one in its place (the session talks to it from the start).
    Fallbacks behind a working hosted provider stay unloaded until it fails."""
    from live.providers.lazy import resolved

    comps.stt = await resolved(comps.stt)
    comps.llm = await resolved(comps.llm)
    comps.tts = await resolved(comps.tts)
    return comps


def build_components(settings: Settings, spec: SessionSpec, ctx: ProviderContext, vad: Any) -> Components:
    """Build STT, LLM and TTS; a hosted provider that cannot even be built falls back now.

    Runs on the session's event loop: a local fallback the prewarm did not load is a
    stand-in here (``live.providers.lazy``), and ``load_fallbacks`` loads the ones in use
    from the start.

    :raise SpecError: the spec asks for something the operator's settings do not allow.
    """
    enforce_spec(spec, settings)
    stt_opts = slot_options(settings.stt, spec.stt)
    llm_opts = slot_options(settings.llm, spec.llm, base_url=llm_base_url(spec, settings.llm))
    tts_opts = slot_options(settings.tts, spec.tts)
    built: dict[str, tuple[str, Any]] = {}
    slots: tuple[tuple[Kind, Any], ...] = (("stt", stt_opts), ("llm", llm_opts), ("tts", tts_opts))
    for kind, opts in slots:
        name = opts.provider
        try:
            built[kind] = (name, _with_fallback(kind, name, opts, ctx, vad))
        except ProviderError as err:
            fallback = getattr(opts, "fallback", None)
            if not fallback or fallback == name:
                raise
            logger.error("%s provider %r unavailable, using %r: %s", kind, name, fallback, err)
            # a local one not loaded yet is a stand-in here: ``load_fallbacks`` loads it
            built[kind] = (fallback, _fallback(kind, fallback, ctx))

    avatar_opts = slot_options(settings.avatar, spec.avatar)
    if avatar_opts.provider == "local" and spec.avatar.avatar_id:
        pack = local_pack(settings, spec.avatar.avatar_id)  # a name, checked by enforce_spec
        avatar_opts = avatar_opts.model_copy(update={"avatar_id": str(pack)})
    chain: list[tuple[str, Any]] = []
    if avatar_opts.provider != "none":  # "none" is a choice (audio only), not a failure
        chain.append((avatar_opts.provider, avatar_opts))
        if avatar_opts.fallback not in (avatar_opts.provider, "none"):
            chain.append((avatar_opts.fallback, settings.avatar))
    return Components(
        stt=built["stt"][1],
        llm=built["llm"][1],
        tts=built["tts"][1],
        stt_name=built["stt"][0],
        llm_name=built["llm"][0],
        tts_name=built["tts"][0],
        avatar_chain=chain,
    )
