"""Session-wide local models: each loads once per test run (2 CPU cores, keep it fast)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings, load_settings
from live.providers import local_llm, local_models, local_stt, local_tts
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
def piper(local_ctx: ProviderContext) -> local_models.PiperEngine:
    return local_models.get_piper(local_ctx, "joe-us")


@pytest.fixture(scope="session")
def espeak(local_ctx: ProviderContext) -> local_models.EspeakEngine:
    return local_models.get_espeak(local_ctx)


@pytest.fixture(scope="session")
def whisper(local_ctx: ProviderContext) -> local_models.WhisperEngine:
    return local_models.get_whisper(local_ctx, "tiny.en")


@pytest.fixture(scope="session")
def llama(local_ctx: ProviderContext) -> local_models.LlamaEngine:
    return local_models.get_llama(local_ctx, "smollm2-135m")
