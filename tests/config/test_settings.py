"""Configuration: sources, platform names, and errors that name the variable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from config.settings import ConfigError, load_settings

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DATABASE_URL", "REDIS_URL",
                "OPENAI_API_KEY", "AVATAR_CONFIG_FILE", "PORT", "LIVEKIT__NODE_IP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_need_no_account() -> None:
    s = load_settings()
    assert s.livekit.embedded and s.broker.embedded
    assert s.db.url.startswith("sqlite:///")
    assert (s.stt.provider, s.llm.provider, s.tts.provider, s.avatar.provider) == ("local",) * 4


def test_platform_names_and_nested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "wss://example.livekit.cloud")
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/app")
    monkeypatch.setenv("REDIS_URL", "redis://cache:6379/1")
    monkeypatch.setenv("LIMITS__MAX_CONCURRENT_SESSIONS", "7")
    s = load_settings()
    assert s.livekit.url == "wss://example.livekit.cloud" and not s.livekit.embedded
    assert s.db.url == "postgresql+psycopg://u:p@db:5432/app"  # Heroku's postgres:// rewritten
    assert s.broker.effective_url == "redis://cache:6379/1"
    assert s.limits.max_concurrent_sessions == 7


def test_nested_name_wins_over_platform_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "ws://a:7880")
    monkeypatch.setenv("LIVEKIT__URL", "ws://b:7880")
    assert load_settings().livekit.url == "ws://b:7880"


def test_vendor_key_fills_hosted_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM__PROVIDER", "openai")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    s = load_settings()
    assert isinstance(s.llm.api_key, SecretStr)
    assert s.llm.api_key.get_secret_value() == "sk-test-123456"
    assert "sk-test-123456" not in repr(s) and "sk-test-123456" not in str(s.masked())
    assert "sk-test-123456" in s.secret_values()


@pytest.mark.parametrize(
    ("var", "value", "expect"),
    [
        ("LIMITS__MAX_CONCURRENT_SESSIONS", "many", "LIMITS__MAX_CONCURRENT_SESSIONS: Input should be a valid integer"),
        ("LIVEKIT_URL", "localhost:7880", "LIVEKIT_URL: expected a ws://"),
        ("STT__PROVIDER", "whisperx", "STT__PROVIDER: Input should be 'local' or 'assemblyai'"),
        ("DATABASE_URL", "mysql://x", "DATABASE_URL: expected a sqlite:/// or postgresql:// URL"),
        ("REDIS_URL", "http://x", "REDIS_URL: expected a redis://"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, expect: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert expect in str(exc.value)


def test_secret_value_never_in_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_API_SECRET", "super-secret-value-xyz")
    monkeypatch.setenv("LIVEKIT_URL", "nonsense-super-secret-value-xyz")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    assert "super-secret-value-xyz" not in str(exc.value)


def test_dotenv_and_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LIMITS__IDLE_TIMEOUT_SECONDS=42\n")
    cfg = tmp_path / "avatar.toml"
    cfg.write_text('[web]\nport = 9123\n[limits]\nidle_timeout_seconds = 7\n')
    monkeypatch.setenv("AVATAR_CONFIG_FILE", str(cfg))
    s = load_settings()
    assert s.limits.idle_timeout_seconds == 42  # .env beats the config file
    assert s.web.port == 9123
    monkeypatch.setenv("AVATAR_CONFIG_FILE", str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="AVATAR_CONFIG_FILE"):
        load_settings()


def test_cross_field_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIMITS__ENDPOINTING_MIN_DELAY", "2")
    monkeypatch.setenv("LIMITS__ENDPOINTING_MAX_DELAY", "1")
    with pytest.raises(ConfigError, match="endpointing_max_delay"):
        load_settings()


def test_cli_stops_with_one_line(tmp_path: Path) -> None:
    """`avatar doctor` with a bad value prints the variable and exits non-zero."""
    env = {"PATH": "/usr/bin:/bin", "LIMITS__MAX_SESSION_MINUTES": "-1", "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "cli.main", "doctor"], env=env, cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "LIMITS__MAX_SESSION_MINUTES: Input should be greater than 0" in proc.stdout + proc.stderr


def test_env_example_documents_every_setting() -> None:
    from pydantic import BaseModel

    from config.settings import PROJECT_ROOT, Settings

    text = (PROJECT_ROOT / ".env.example").read_text()
    missing = []
    for name, f in Settings.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            missing += [f"{name.upper()}__{sub.upper()}" for sub in ann.model_fields
                        if f"{name.upper()}__{sub.upper()}=" not in text]
        elif f"{name.upper()}=" not in text:
            missing.append(name.upper())
    assert not missing, f".env.example lacks {missing}"
