"""Session-wide local models: each loads once per test run (2 CPU cores, keep it fast)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings, load_settings
from engines.espeak import EspeakEngine, get_espeak
from engines.llama import LlamaEngine, get_llama
from engines.piper import PiperEngine, get_piper
from engines.whisper import WhisperEngine, get_whisper
from live.providers import local_llm, local_stt, local_tts
from live.providers.registry import ProviderContext

# importing the provider modules registers them (live.providers imports them in production)
REGISTERED = (local_llm, local_stt, local_tts)


@pytest.fixture(scope="session")
def local_var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("local-var")


@pytest.fixture(scope="session")
def local_settings(local_var_dir: Path) -> Settings:
    return load_settings(_env_file=None, var_dir=local_var_dir)


@pytest.fixture(scope="session")
def local_ctx(local_settings: Settings) -> Iterator[ProviderContext]:
    """One provider context (= one worker process's model cache) for the whole session."""
    yield ProviderContext(local_settings)


@pytest.fixture(scope="session")
def piper(local_ctx: ProviderContext) -> PiperEngine:
    return get_piper(local_ctx, "joe-us")


@pytest.fixture(scope="session")
def espeak(local_ctx: ProviderContext) -> EspeakEngine:
    return get_espeak(local_ctx)


@pytest.fixture(scope="session")
def whisper(local_ctx: ProviderContext) -> WhisperEngine:
    return get_whisper(local_ctx, "tiny.en")


@pytest.fixture(scope="session")
def llama(local_ctx: ProviderContext) -> LlamaEngine:
    return get_llama(local_ctx, "smollm2-135m")
