"""Local fallbacks whose models load when first needed, in a thread, not in every job process.

A hosted STT, LLM or TTS is backed by a local one (``*__FALLBACK=local``). Loading Whisper,
SmolLM2 and Piper into every job process for an outage that may never come cost a hosted
session about 280 MiB and a fifth of a core (bench/results/load-limits.md, item 2). Here the
fallback slot holds a stand-in with the local provider's capabilities, sample rate and name;
the first time the fallback adapter turns to it, its models load through the process's
``ModelStore`` in a worker thread (the event loop goes on serving the session meanwhile), the
real provider is built from the loaded models, and every later use goes straight to it.

- ``DeferredSTT``/``DeferredLLM``: their streams wait for the load, then relay the real
  provider's stream (speech events, chat chunks), so any adapter can hold them.
- ``DeferredTTS``: ``fallback.TTSFallback`` awaits ``load()`` before it asks the voice to
  speak, then uses the real provider's own streams (audio, word timings, segments as they are).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from livekit.agents import NOT_GIVEN, APIConnectionError, APIConnectOptions, llm, stt, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NotGivenOr

from config.catalog import LLM_MODELS, PIPER_VOICES, WHISPER_MODELS, Slot
from engines import EngineError
from live.providers.local.prewarm import LAZY_FALLBACKS, load_models
from live.providers.registry import ProviderContext, ProviderError, create

logger = logging.getLogger(__name__)

# What the local providers are (``live.providers.local_*``; tests/live/providers_hosted/
# test_lazy_fallbacks.py compares each with the real object): the adapters read it when built.
_STT_CAPABILITIES = stt.STTCapabilities(
    streaming=True, interim_results=True, aligned_transcript=False, offline_recognize=True
)
_TTS_CAPABILITIES = tts.TTSCapabilities(streaming=True, aligned_transcript=True)
_LABELS = {
    "stt": "live.providers.local_stt.LocalSTT",
    "llm": "live.providers.local_llm.LocalLLM",
    "tts": "live.providers.local_tts.LocalTTS",
}

T = TypeVar("T")


class _Loader(Generic[T]):
    """Builds the real provider once: models in a thread, then the object on the loop."""

    def __init__(self, kind: Slot, name: str, options: Any, ctx: ProviderContext) -> None:
        self.kind, self.name, self._options, self._ctx = kind, name, options, ctx
        self.value: T | None = None
        self._task: asyncio.Task[T] | None = None

    async def load(self) -> T:
        if self.value is not None:
            return self.value
        task = self._task
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = self._task = asyncio.ensure_future(self._load())
        # shielded: a turn that gives up waiting must not cancel the load for the next one
        return await asyncio.shield(task)

    async def _load(self) -> T:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(load_models, self.kind, self.name, self._options, self._ctx)
            # the factory finds every model in the store now: building is cheap
            value: T = self._create()
        except Exception as err:
            logger.error("loading the %s fallback %r failed: %s", self.kind, self.name, err)
            raise APIConnectionError(
                f"{self.kind} fallback {self.name!r} could not load: {err}", retryable=False
            ) from None
        seconds = time.perf_counter() - started
        logger.warning(
            "%s fallback %r loaded on first use in %.2f s",
            self.kind,
            self.name,
            seconds,
            extra={"slot": self.kind, "provider": self.name, "load_seconds": round(seconds, 3)},
        )
        self.value = value
        return value

    def loaded(self) -> T:
        """The real provider, loading it here if it is not yet (blocking: see DeferredTTS)."""
        if self.value is None:
            logger.warning("%s fallback %r loads on the event loop", self.kind, self.name)
            load_models(self.kind, self.name, self._options, self._ctx)
            self.value = value = self._create()
            return value
        return self.value

    def _create(self) -> T:
        built: Any = create(self.kind, self.name, self._options, self._ctx)
        return built  # type: ignore[no-any-return]


def deferred(kind: Slot, name: str, options: Any, ctx: ProviderContext) -> Any | None:
    """A stand-in for provider ``name`` that loads on first use; ``None`` if it cannot wait.

    :raise ProviderError: the provider is not installed (as ``create`` would say).
    """
    if name not in LAZY_FALLBACKS.get(kind, frozenset()):
        return None
    _check_installed(kind, name)
    if kind == "stt":
        model = f"whisper-{_model(options, WHISPER_MODELS)}"  # as LocalSTT names it
        return DeferredSTT(_Loader(kind, name, options, ctx), model=model)
    if kind == "llm":
        return DeferredLLM(_Loader(kind, name, options, ctx), model=_model(options, LLM_MODELS))
    voice = options.voice if options.provider == "local" else PIPER_VOICES[0]
    try:
        return DeferredTTS(_Loader(kind, name, options, ctx), voice=voice)
    except EngineError as err:  # an unknown voice, its files missing
        raise ProviderError(str(err)) from err


def _model(options: Any, models: tuple[str, ...]) -> str:
    return options.model if options.provider == "local" and options.model in models else models[0]


def _check_installed(kind: Slot, name: str) -> None:
    """What ``create`` would report now, without loading: the provider's module and packages."""
    import importlib.util

    from live.providers.registry import _install_hint, entry

    e = entry(kind, name)  # raises if its module could not be imported
    for pkg in e.provider.packages:
        try:
            found = importlib.util.find_spec(pkg.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise ProviderError(
                f"{kind} provider {name!r} needs the module {pkg.module!r}: "
                f"run {_install_hint(e.provider, pkg.module)}"
            )


async def ensure_loaded(provider: Any) -> None:
    """Load ``provider`` if it is a stand-in still waiting (off the event loop)."""
    if isinstance(provider, _StandIn):
        await provider.load()


def is_loaded(provider: Any) -> bool:
    """False for a stand-in whose model has not been loaded yet."""
    if isinstance(provider, _StandIn):
        return provider._loader.value is not None
    return True


async def resolved(provider: Any) -> Any:
    """``provider`` itself, or for a stand-in the real provider, loaded in a thread."""
    if isinstance(provider, _StandIn):
        return await provider.load()
    return provider


class _Closeable(Protocol):
    async def aclose(self) -> None: ...


P = TypeVar("P", bound=_Closeable)


class _StandIn(Generic[P]):
    """What the stand-ins share: the local provider's label, model and provider name, a
    ``load`` that builds the real one, and ``aclose`` that closes it if it was built.

    Comes first among the bases: its ``__init__`` passes the rest on to LiveKit's class, then
    sets the label (LiveKit's sets its own, from the class name).
    """

    def __init__(self, loader: _Loader[P], *, model: str, **base: Any) -> None:
        super().__init__(**base)
        self._loader = loader
        self._label = _LABELS[loader.kind]
        self._model = model

    @property
    def model(self) -> str:
        return self._model

    @property
    def provider(self) -> str:
        return "local"

    async def load(self) -> P:
        return await self._loader.load()

    async def aclose(self) -> None:
        if self._loader.value is not None:
            await self._loader.value.aclose()


# --- STT ------------------------------------------------------------------------------------


class DeferredSTT(_StandIn[stt.STT], stt.STT):
    """The local STT before its model is loaded; its streams load it, then relay it."""

    def __init__(self, loader: _Loader[stt.STT], *, model: str) -> None:
        super().__init__(loader, model=model, capabilities=_STT_CAPABILITIES)

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        real = await self._loader.load()
        return await real.recognize(buffer, language=language, conn_options=conn_options)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _DeferredRecognizeStream(stt=self, language=language, conn_options=conn_options)


class _DeferredRecognizeStream(stt.RecognizeStream):
    def __init__(
        self, *, stt: DeferredSTT, language: NotGivenOr[str], conn_options: APIConnectOptions
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options)
        self._deferred = stt
        self._language = language

    async def _run(self) -> None:
        real = await self._deferred._loader.load()  # frames wait in the input channel
        inner = real.stream(language=self._language, conn_options=self._conn_options)

        async def forward_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    inner.flush()
                else:
                    inner.push_frame(data)
            inner.end_input()

        async def forward_events() -> None:
            async for ev in inner:
                self._event_ch.send_nowait(ev)

        tasks = [asyncio.create_task(forward_input(), name="deferred-stt-input"),
                 asyncio.create_task(forward_events(), name="deferred-stt-events")]
        try:
            await tasks[1]
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            await inner.aclose()


# --- LLM ------------------------------------------------------------------------------------


class DeferredLLM(_StandIn[llm.LLM], llm.LLM):
    """The local LLM before its model is loaded; its streams load it, then relay it."""

    def __init__(self, loader: _Loader[llm.LLM], *, model: str) -> None:
        super().__init__(loader, model=model)

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        def open_real(real: llm.LLM) -> llm.LLMStream:
            return real.chat(
                chat_ctx=chat_ctx,
                tools=tools,
                conn_options=conn_options,
                parallel_tool_calls=parallel_tool_calls,
                tool_choice=tool_choice,
                extra_kwargs=extra_kwargs,
            )

        return _DeferredLLMStream(
            self, open_real, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


class _DeferredLLMStream(llm.LLMStream):
    def __init__(
        self,
        deferred: DeferredLLM,
        open_real: Callable[[llm.LLM], llm.LLMStream],
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(deferred, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._deferred = deferred
        self._open_real = open_real

    async def _run(self) -> None:
        real = await self._deferred._loader.load()
        async with self._open_real(real) as inner:
            async for chunk in inner:
                self._event_ch.send_nowait(chunk)


# --- TTS ------------------------------------------------------------------------------------


def _piper_sample_rate(voice: str) -> int:
    """The voice's rate from its config, without loading the voice."""
    from engines.model_paths import piper_voice_paths

    _, config_path = piper_voice_paths(voice)
    with open(config_path, encoding="utf-8") as f:
        return int(json.load(f)["audio"]["sample_rate"])


class DeferredTTS(_StandIn[tts.TTS], tts.TTS):
    """The local voice before it is loaded.

    Audio frames carry segment and word-timing details a relay would have to rebuild, so
    this one does not relay: ``TTSFallback`` awaits ``load()`` before it turns to the voice,
    then ``stream``/``synthesize`` are the real voice's. Used elsewhere without that, the
    first call loads on the caller's thread (and says so in the log).
    """

    def __init__(self, loader: _Loader[tts.TTS], *, voice: str) -> None:
        super().__init__(
            loader,
            model=f"piper-{voice}",
            capabilities=_TTS_CAPABILITIES,
            sample_rate=_piper_sample_rate(voice),
            num_channels=1,
        )
        self._voice = voice
        self._relaying = False

    async def load(self) -> tts.TTS:
        real = await super().load()
        if real.sample_rate != self.sample_rate:  # the adapter resamples by our rate
            raise APIConnectionError(
                f"local voice {self._voice!r}: {real.sample_rate} Hz, announced "
                f"{self.sample_rate} Hz", retryable=False,
            )
        if not self._relaying:
            self._relaying = True
            real.on("metrics_collected", self._relay_metrics)
        return real

    def _relay_metrics(self, *args: Any, **kwargs: Any) -> None:
        self.emit("metrics_collected", *args, **kwargs)

    def _real(self) -> tts.TTS:
        real = self._loader.loaded()
        if not self._relaying:
            self._relaying = True
            real.on("metrics_collected", self._relay_metrics)
        return real

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._real().synthesize(text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        return self._real().stream(conn_options=conn_options)

    def prewarm(self) -> None:
        pass  # nothing to warm before the model is there
