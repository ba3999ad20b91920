"""A session spec chooses only among what the operator configured (issue #12, items 1 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.policy import enforce_spec, llm_base_url, local_pack, session_limits, spec_violations
from config.session import SessionSpec, SpecError, parse_spec
from config.settings import ConfigError, Settings, load_settings
from live.pipeline import build_components, slot_options

pytestmark = pytest.mark.unit

OPERATOR_URL = "http://127.0.0.1:9/v1"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        llm={"provider": "openai", "base_url": OPERATOR_URL,
             "endpoints": {"second": "http://127.0.0.1:10/v1/"}},
        limits={"max_session_minutes": 30, "idle_timeout_seconds": 120},
        var_dir=tmp_path,
        _env_file=None,
    )


@pytest.mark.parametrize(
    "raw",
    [
        '{"llm": {"base_url": "http://attacker.example/v1"}}',
        '{"llm": {"base_url": "http://169.254.169.254/latest"}}',
        '{"llm": {"provider": "openai", "base_url": null}}',
    ],
)
def test_a_spec_cannot_name_an_llm_url(raw: str) -> None:
    with pytest.raises(SpecError, match=r"llm: .*base_url cannot be set by a session"):
        parse_spec(raw)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"avatar": {"avatar_id": "../../etc"}}', "avatar.avatar_id"),
        ('{"avatar": {"avatar_id": "/var/lib/packs/x"}}', "avatar.avatar_id"),
        ('{"tts": {"voice": "http://x/voice"}}', "tts.voice"),
        ('{"stt": {"model": "a b"}}', "stt.model"),
        ('{"llm": {"endpoint": "http://x"}}', "llm.endpoint"),
        ('{"llm": {"model": "' + "m" * 200 + '"}}', "llm.model"),
    ],
)
def test_names_cannot_be_urls_or_paths(raw: str, field: str) -> None:
    with pytest.raises(SpecError, match=rf"{field}: use letters"):
        parse_spec(raw)


def test_named_endpoint_is_resolved_from_the_settings(settings: Settings) -> None:
    spec = SessionSpec.model_validate({"llm": {"endpoint": "second", "model": "m"}})
    enforce_spec(spec, settings)
    opts = slot_options(settings.llm, spec.llm, base_url=llm_base_url(spec, settings.llm))
    assert opts.base_url == "http://127.0.0.1:10/v1"
    assert opts.api_key == settings.llm.api_key and opts.model == "m"
    assert not hasattr(opts, "endpoint")
    default = slot_options(settings.llm, SessionSpec().llm,
                           base_url=llm_base_url(SessionSpec(), settings.llm))
    assert default.base_url == OPERATOR_URL


def test_unknown_endpoint_is_refused_by_name(settings: Settings) -> None:
    spec = SessionSpec.model_validate({"llm": {"endpoint": "mine"}})
    assert spec_violations(spec, settings) == {
        "llm.endpoint": "unknown endpoint 'mine' (configured: second)"
    }
    with pytest.raises(SpecError, match=r"llm.endpoint: unknown endpoint 'mine'"):
        build_components(settings, spec, ctx=None, vad=None)  # type: ignore[arg-type]


def test_endpoints_setting_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"LLM__ENDPOINTS: .*http:// or https://"):
        load_settings(llm={"endpoints": {"x": "file:///etc/passwd"}}, _env_file=None)
    with pytest.raises(ConfigError, match="LLM__ENDPOINTS: endpoint name"):
        load_settings(llm={"endpoints": {"a b": "http://127.0.0.1:1"}}, _env_file=None)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"max_session_minutes": 31}, "max_session_minutes"),
        ({"max_session_minutes": 1440}, "max_session_minutes"),
        ({"idle_timeout_seconds": 121}, "idle_timeout_seconds"),
        ({"llm": {"provider": "local", "model": "llama-70b"}}, "llm.model"),
        ({"stt": {"provider": "local", "model": "large-v3"}}, "stt.model"),
        ({"tts": {"provider": "local", "voice": "nobody"}}, "tts.voice"),
        ({"avatar": {"provider": "local", "avatar_id": "nobody"}}, "avatar.avatar_id"),
        ({"llm": {"provider": "local", "endpoint": "second"}}, "llm.endpoint"),
    ],
)
def test_spec_above_the_operator_is_refused(settings: Settings, data: dict, field: str) -> None:  # type: ignore[type-arg]
    spec = SessionSpec.model_validate(data)
    problems = spec_violations(spec, settings)
    assert list(problems) == [field]
    with pytest.raises(SpecError, match=field):
        enforce_spec(spec, settings)


def test_spec_may_shorten_limits_never_lengthen(settings: Settings) -> None:
    assert session_limits(SessionSpec(), settings) == (30, 120)
    short = SessionSpec(max_session_minutes=5, idle_timeout_seconds=10)
    assert spec_violations(short, settings) == {}
    assert session_limits(short, settings) == (5, 10)
    # even a spec that skipped the check (stored before the rule) cannot run longer
    long = SessionSpec(max_session_minutes=600, idle_timeout_seconds=9999)
    assert session_limits(long, settings) == (30, 120)


def test_portrait_packs_by_name_only(settings: Settings) -> None:
    shipped = local_pack(settings, "astronaut")
    assert shipped is not None and (shipped / "pack.json").is_file()
    own = settings.var_dir / "portraits" / "me"
    own.mkdir(parents=True)
    (own / "pack.json").write_text("{}")
    assert local_pack(settings, "me") == own
    assert local_pack(settings, "nobody") is None
    ok = SessionSpec.model_validate({"avatar": {"provider": "local", "avatar_id": "me"}})
    assert spec_violations(ok, settings) == {}


def test_typed_chat_reaches_the_agent_only_when_the_session_allows_it() -> None:
    from live.worker import room_options

    assert room_options(SessionSpec()).get_text_input_options() is None
    assert room_options(SessionSpec(text_chat=True)).get_text_input_options() is not None


def test_the_callers_gain_control_follows_the_stt_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STT__GAIN_CONTROL=false`` reaches LiveKit's room input: its gain control (on by
    default, as LiveKit has it) costs the session's event loop on every caller frame."""
    from live.worker import room_options

    assert load_settings(_env_file=None).stt.gain_control is True
    monkeypatch.setenv("STT__GAIN_CONTROL", "false")
    off = load_settings(_env_file=None).stt.gain_control
    assert off is False
    for on in (True, off):
        audio = room_options(SessionSpec(), gain_control=on).get_audio_input_options()
        assert audio is not None and audio.auto_gain_control is on


def test_the_callers_frame_length_follows_the_stt_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """``STT__FRAME_MS`` reaches LiveKit's room input (the VAD hears the end of speech only once
    the frame holding it is complete); a length the audio stack cannot cut is refused by name."""
    from live.worker import room_options

    assert load_settings(_env_file=None).stt.frame_ms == 50
    monkeypatch.setenv("STT__FRAME_MS", "20")
    ms = load_settings(_env_file=None).stt.frame_ms
    assert ms == 20
    audio = room_options(SessionSpec(), frame_ms=ms).get_audio_input_options()
    assert audio is not None and audio.frame_size_ms == 20
    monkeypatch.setenv("STT__FRAME_MS", "25")
    with pytest.raises(ConfigError, match="STT__FRAME_MS"):
        load_settings(_env_file=None)
