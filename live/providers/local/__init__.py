"""The LiveKit side of the offline models: VAD and end of turn, the persona prompt, prewarm.

The engines themselves (Whisper, SmolLM2, Piper, espeak-ng), where their weights are and the
per-process model store live in the top-level ``engines`` package, which the Celery summariser,
``avatar call`` and the benchmarks use too. Here: ``turn_models`` (Silero VAD, LiveKit's
``v1-mini`` end-of-turn model, from their plugins), ``prompt`` (the local LLM's persona) and
``prewarm`` (loads what the settings use into the store, once per worker process). The
LiveKit STT/LLM/TTS classes are ``live.providers.local_stt``/``local_llm``/``local_tts``.
"""
