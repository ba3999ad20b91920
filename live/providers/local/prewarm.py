"""Load the local models the settings' primary providers use, once per worker process."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

from config.catalog import LLM_MODELS, PIPER_VOICES, WHISPER_MODELS, Slot
from config.session import DEFAULT_INSTRUCTIONS
from engines.espeak import get_espeak
from engines.llama import get_llama
from engines.piper import get_piper
from engines.whisper import get_whisper
from live.providers.local.prompt import persona_examples, system_prompt
from live.providers.local.turn_models import get_vad, init_turn_detector
from live.providers.registry import ProviderContext

logger = logging.getLogger(__name__)

# Fallbacks whose models can wait for their first use (``live.providers.lazy`` has a stand-in
# for each); any other fallback (espeak-ng, small) is still loaded here.
LAZY_FALLBACKS: dict[Slot, frozenset[str]] = {
    "stt": frozenset({"local"}),
    "llm": frozenset({"local"}),
    "tts": frozenset({"local"}),
}


def whisper_model(options: Any) -> str:
    """The Whisper a local STT built from ``options`` uses: the settings' own when the local
    STT is the primary, else (a fallback behind a hosted one) the default."""
    own = getattr(options, "provider", None) == "local"
    return str(options.model) if own and options.model in WHISPER_MODELS else WHISPER_MODELS[0]


def load_models(kind: Slot, name: str, options: Any, ctx: ProviderContext) -> None:
    """Load what provider ``name`` needs into ``ctx``, as its factory will ask for it.

    ``options`` is what the factory receives: a fallback gets the slot's settings group,
    whose model names the hosted primary's, so the local default is loaded (as the factories
    in ``local_stt``/``local_llm``/``local_tts`` choose). Blocking: call it from prewarm or a
    thread, never from an event loop.
    """
    own = getattr(options, "provider", None) == name
    if kind == "stt" and name == "local":
        get_whisper(ctx, whisper_model(options))
        get_vad(ctx)  # the local STT cuts utterances with it
    elif kind == "llm" and name == "local":
        get_llama(ctx, options.model if own and options.model in LLM_MODELS else LLM_MODELS[0])
    elif kind == "tts" and name == "local":
        get_piper(ctx, options.voice if own and options.voice in PIPER_VOICES else PIPER_VOICES[0])
    elif kind == "tts" and name == "espeak":
        get_espeak(ctx)


def _preloaded(ctx: ProviderContext, kind: Slot) -> list[str]:
    group = getattr(ctx.settings, kind)
    names = [group.provider]
    lazy = group.fallback in LAZY_FALLBACKS.get(kind, frozenset())
    if group.fallback and (ctx.settings.limits.preload_fallbacks or not lazy):
        names.append(group.fallback)
    return names


def prewarm(ctx: ProviderContext) -> None:
    """Load the local models the primary providers use, once per worker process.

    Meant for the LiveKit job process's ``setup_fnc``: afterwards factories find the models
    in ``ctx.shared`` and sessions start without load time. A local *fallback* behind a hosted
    provider is loaded when it is first needed (``live.providers.lazy``, in a thread; the
    local face's portrait in ``live.worker.avatar_factories``), unless
    ``LIMITS__PRELOAD_FALLBACKS`` asks for it here: a hosted deployment's job processes then
    hold no model they may never use (about 280 MiB each, bench/results/load-limits.md).
    """
    s = ctx.settings
    tune_malloc()
    get_vad(ctx)
    if s.limits.turn_detector == "v1-mini":
        init_turn_detector(ctx)
    elif s.limits.turn_detector == "lm" and s.stt.provider == "local":
        from live.providers.turn import get_turn_llama
        from live.providers.turn_lm import score_sync

        scorer = get_turn_llama(ctx)
        ctx.cached("local.eot.lm.warm", lambda: score_sync(scorer, "Hello there"))  # pages in
    elif s.limits.turn_detector == "smart-turn":
        from live.providers.smart_turn import SmartTurnModel

        ctx.cached("local.eot.smart-turn", SmartTurnModel)
    kinds: tuple[Slot, ...] = ("stt", "llm", "tts")
    for kind in kinds:
        for name in _preloaded(ctx, kind):
            load_models(kind, name, getattr(s, kind), ctx)
    if "local" in _preloaded(ctx, "stt"):
        whisper = get_whisper(ctx, whisper_model(s.stt))
        # the caller's first question is otherwise the process's first, slower, decode
        ctx.cached(f"local.stt.{whisper.model_name}.warm",
                   lambda: whisper.warm_sync(s.stt.window_seconds))
    if "local" in _preloaded(ctx, "llm"):
        own = s.llm.provider == "local" and s.llm.model in LLM_MODELS
        model = s.llm.model if own else LLM_MODELS[0]
        engine = get_llama(ctx, model)
        ctx.cached(
            f"local.llm.{model}.warm",
            lambda: engine.warm_prefix(
                system_prompt(DEFAULT_INSTRUCTIONS), persona_examples(DEFAULT_INSTRUCTIONS)
            ),
        )
    if s.avatar.provider == "local" or (
        s.avatar.fallback == "local" and s.limits.preload_fallbacks
    ):
        from live.providers.local_avatar import load_portrait

        load_portrait(s.avatar, ctx)  # a fallback's loads in a thread if it is ever needed
    _release_free_memory()
    logger.info("local models loaded", extra={"models": sorted(ctx.shared)})


_M_MMAP_THRESHOLD = -3


def tune_malloc(threshold: int = 4 << 20) -> None:
    """Serve buffers above ``threshold`` with mmap so they return to the OS when freed.

    Whisper and Piper allocate tens of MiB per utterance; glibc's adaptive threshold moves
    such buffers into the heap, where they stay resident after use (measured: peak RSS
    1050 -> 960 MiB, steady 960 -> 870 MiB with every model loaded). Process-wide, glibc only.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def _release_free_memory() -> None:
    """Hand loader garbage (protobuf copies, temp buffers) back to the OS (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
