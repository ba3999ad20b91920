"""One model store: `avatar call` and the benchmarks load the agent's engines, each once per
process, with their own settings."""

from __future__ import annotations

import pytest

from config.settings import Settings
from engines.piper import PiperEngine
from engines.store import process_models
from engines.whisper import WhisperEngine
from tests.live.providers.speech import wer

pytestmark = pytest.mark.slow


def test_the_caller_speaks_and_hears_with_the_agents_engines(local_settings: Settings) -> None:
    from cli import call

    store = process_models(local_settings)
    assert process_models() is store  # one per process
    said = "Hello, can you tell me when the shop opens on Saturday?"
    pcm = call.synthesize(said)
    assert pcm.size > call.SAMPLE_RATE  # more than a second of speech
    assert wer(said, call.transcribe(pcm, call.SAMPLE_RATE)) <= 0.2
    voice = store.shared["local.tts.piper.joe-us.whole"]
    assert isinstance(voice, PiperEngine) and not voice.streaming  # whole sentences, unlike the agent's
    assert isinstance(store.shared["local.stt.tiny.en"], WhisperEngine)
    call.synthesize("Again.")
    assert store.shared["local.tts.piper.joe-us.whole"] is voice  # loaded once
