"""Hosted factories: options from settings, clear errors, nothing contacted."""

from __future__ import annotations

import pytest
from livekit.agents import llm, stt, tts
from livekit.plugins import assemblyai, cartesia, openai
from pydantic import SecretStr

from config.settings import AvatarSettings, LLMSettings, STTSettings, TTSSettings, load_settings
from live.providers import fallback
from live.providers.assemblyai import AssemblyAIOptions
from live.providers.openai_llm import PLACEHOLDER_KEY, OpenAIOptions
from live.providers.registry import ProviderContext, ProviderError, create, entry
from live.providers.tavus import HostedAvatar
from tests.stubs import EchoLLM, ScriptedSTT, ToneTTS

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kind", "name", "options", "message"),
    [
        (
            "stt",
            "assemblyai",
            STTSettings(provider="assemblyai"),
            "STT__API_KEY or ASSEMBLYAI_API_KEY",
        ),
        ("llm", "openai", LLMSettings(provider="openai"), "LLM__API_KEY or OPENAI_API_KEY"),
        ("tts", "cartesia", TTSSettings(provider="cartesia"), "TTS__API_KEY or CARTESIA_API_KEY"),
        ("avatar", "tavus", AvatarSettings(provider="tavus"), "AVATAR__API_KEY or TAVUS_API_KEY"),
    ],
)
def test_missing_key_names_the_variables(
    kind: str, name: str, options: object, message: str, ctx: ProviderContext
) -> None:
    with pytest.raises(ProviderError) as info:
        create(kind, name, options, ctx)  # type: ignore[arg-type]
    assert str(info.value) == f"{kind} provider {name!r} needs {message}"


def test_hosted_entries_are_marked_hosted() -> None:
    for kind, name in [
        ("stt", "assemblyai"),
        ("llm", "openai"),
        ("tts", "cartesia"),
        ("avatar", "tavus"),
        ("avatar", "hedra"),
    ]:
        assert entry(kind, name).hosted, (kind, name)  # type: ignore[arg-type]


def test_vendor_env_key_is_used_when_the_slot_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vendor's variable reaches the provider through the settings, not the module."""
    monkeypatch.setenv("ASSEMBLYAI_API_KEY", "from-env-0123")
    settings = load_settings(_env_file=None)  # the STT slot itself stays local
    ctx = ProviderContext(settings)
    stt_ = create("stt", "assemblyai", STTSettings(provider="assemblyai"), ctx)
    assert stt_._api_key == "from-env-0123"  # type: ignore[attr-defined]
    # the slot's own key wins over the vendor variable
    own = STTSettings(provider="assemblyai", api_key=SecretStr("slot-key"))
    assert create("stt", "assemblyai", own, ctx)._api_key == "slot-key"  # type: ignore[attr-defined]


def test_one_vendors_key_never_goes_to_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fallback or a session's override gets its own vendor's key, or none."""
    monkeypatch.setenv("TAVUS_API_KEY", "tavus-key-0123")
    settings = load_settings(_env_file=None, avatar={"provider": "tavus"})
    assert settings.api_key_for("avatar", "tavus") is not None
    assert settings.api_key_for("avatar", "hedra") is None


def test_assemblyai_models_and_plugin(ctx: ProviderContext) -> None:
    key = SecretStr("k-0123456789")
    # the local default model name maps to AssemblyAI's English streaming model
    opts = AssemblyAIOptions.from_settings(STTSettings(provider="assemblyai", api_key=key))
    assert opts.model == "universal-streaming-english"
    opts = AssemblyAIOptions.from_settings(
        STTSettings(provider="assemblyai", api_key=key, model="universal-streaming", language="de")
    )
    assert opts.model == "universal-streaming-multilingual"
    with pytest.raises(ProviderError, match="unknown model 'nova-3'"):
        AssemblyAIOptions.from_settings(
            STTSettings(provider="assemblyai", api_key=key, model="nova-3")
        )
    built = create(
        "stt",
        "assemblyai",
        STTSettings(provider="assemblyai", api_key=key, base_url="ws://127.0.0.1:9/"),
        ctx,
    )
    assert isinstance(built, assemblyai.STT)
    assert built.capabilities.streaming
    assert built.model == "universal-streaming-english"


def test_openai_options() -> None:
    # api.openai.com: a key is required and the local default model is replaced
    opts = OpenAIOptions.from_settings(LLMSettings(provider="openai", api_key=SecretStr("sk-1")))
    assert (opts.model, opts.base_url) == ("gpt-4o-mini", None)
    # an OpenAI-compatible server needs no key and keeps the configured model
    opts = OpenAIOptions.from_settings(
        LLMSettings(provider="openai", base_url="http://127.0.0.1:8080/v1/", model="smollm2-135m")
    )
    assert opts.api_key == PLACEHOLDER_KEY
    assert opts.model == "smollm2-135m"
    assert opts.base_url == "http://127.0.0.1:8080/v1"


def test_openai_and_cartesia_build_plugins(ctx: ProviderContext) -> None:
    built = create(
        "llm",
        "openai",
        LLMSettings(provider="openai", api_key=SecretStr("sk-1"), base_url="http://127.0.0.1:9/v1"),
        ctx,
    )
    assert isinstance(built, openai.LLM)
    assert built.model == "smollm2-135m"
    voice = create(
        "tts", "cartesia", TTSSettings(provider="cartesia", api_key=SecretStr("c-1")), ctx
    )
    assert isinstance(voice, cartesia.TTS)
    assert voice.model == "sonic-3"
    assert voice.sample_rate == 24000
    with pytest.raises(ProviderError, match="TTS__BASE_URL"):
        create(
            "tts",
            "cartesia",
            TTSSettings(provider="cartesia", api_key=SecretStr("c-1"), base_url="ws://x"),
            ctx,
        )


@pytest.mark.parametrize(
    ("fallback_name", "message"),
    [
        ("local", "Hedra's realtime avatar service is discontinued; falling back to local"),
        ("none", "Hedra's realtime avatar service is discontinued; continuing without an avatar"),
    ],
)
def test_hedra_is_discontinued(fallback_name: str, message: str, ctx: ProviderContext) -> None:
    options = AvatarSettings(
        provider="hedra",
        api_key=SecretStr("hedra-key-0123"),
        fallback=fallback_name,  # type: ignore[arg-type]
    )
    with pytest.raises(ProviderError) as info:
        create("avatar", "hedra", options, ctx)
    assert str(info.value) == message
    assert info.value.__cause__ is None and info.value.__suppress_context__


async def test_tavus_factory_builds_a_guarded_session(ctx: ProviderContext, http_ctx: None) -> None:
    avatar = create(
        "avatar",
        "tavus",
        AvatarSettings(
            provider="tavus", api_key=SecretStr("tvs-1"), avatar_id="r1", replica_id="p1"
        ),
        ctx,
    )
    assert isinstance(avatar, HostedAvatar)
    assert avatar.provider == "tavus"
    # the plugin itself makes exactly one POST per start: retries are off
    assert avatar.plugin_session._api._conn_options.max_retry == 0


def test_stt_fallback_needs_vad_for_batch_stt() -> None:
    class BatchSTT(ScriptedSTT):
        def __init__(self) -> None:
            stt.STT.__init__(
                self, capabilities=stt.STTCapabilities(streaming=False, interim_results=False)
            )

    with pytest.raises(ProviderError, match="needs a VAD"):
        fallback.build_stt_with_fallback(ScriptedSTT(), BatchSTT())
    adapter = fallback.build_stt_with_fallback(ScriptedSTT(), ScriptedSTT())
    assert isinstance(adapter, stt.FallbackAdapter)


def test_llm_and_tts_fallback_adapters() -> None:
    assert isinstance(fallback.build_llm_with_fallback(EchoLLM(), EchoLLM()), llm.FallbackAdapter)
    adapter = fallback.build_tts_with_fallback(ToneTTS(24000), ToneTTS(22050))
    assert isinstance(adapter, tts.FallbackAdapter)
    assert adapter.sample_rate == 24000  # the lower-rate member is resampled

    stereo = ToneTTS(22050)
    stereo._num_channels = 2
    with pytest.raises(ProviderError, match="channel"):
        fallback.build_tts_with_fallback(ToneTTS(24000), stereo)
