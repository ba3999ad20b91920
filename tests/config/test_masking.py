"""Database and Redis passwords stay off pages, logs and command lines (issue #12, item 5)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import config.logging as config_logging
from cli.services import (
    LiveKitServerConfig,
    free_port,
    livekit_server_command,
    livekit_server_env,
    start_livekit_server,
    stop_process,
)
from config.logging import JsonFormatter, install_secret_mask
from config.settings import PROJECT_ROOT, Settings, load_settings
from tests.conftest import require_livekit_server

pytestmark = pytest.mark.unit

DB_PASSWORD = "db-pass-Kq81z"
REDIS_PASSWORD = "redis-pass-77Zx"
LLM_PASSWORD = "llm-pass-Ppp3"


def _settings(tmp_path: Path) -> Settings:
    return load_settings(
        db={"url": f"postgresql://avatar:{DB_PASSWORD}@db.internal:5432/avatar"},
        broker={"url": f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0"},
        llm={"endpoints": {"own": f"https://user:{LLM_PASSWORD}@llm.internal/v1"}},
        var_dir=tmp_path,
        _env_file=None,
    )


def test_url_passwords_are_secrets_and_masked(tmp_path: Path) -> None:
    s = _settings(tmp_path)
    assert {DB_PASSWORD, REDIS_PASSWORD, LLM_PASSWORD} <= set(s.secret_values())
    text = str(s.masked())
    for pw in (DB_PASSWORD, REDIS_PASSWORD, LLM_PASSWORD):
        assert pw not in text
    assert s.masked()["broker"]["url"] == "redis://:***@cache.internal:6379/0"
    assert s.masked()["db"]["url"] == "postgresql+psycopg://avatar:***@db.internal:5432/avatar"


def test_log_records_are_masked_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(logging.Logger, "makeRecord", logging.Logger.makeRecord)
    monkeypatch.setattr(config_logging, "_mask", None)
    s = _settings(tmp_path)
    install_secret_mask(s.secret_values())
    log = logging.getLogger("tests.masking")
    with caplog.at_level(logging.INFO, logger="tests.masking"):
        log.info("connecting to %s", s.db.url)
        log.info("broker", extra={"url": s.broker.url, "urls": [s.broker.url]})
        try:
            raise ConnectionError(f"cannot reach {s.broker.url}")
        except ConnectionError:
            log.exception("broker down")
    json_lines = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    plain = "\n".join(logging.Formatter("%(message)s %(url)s").format(r) for r in caplog.records
                      if hasattr(r, "url"))
    tracebacks = "\n".join(logging.Formatter().format(r) for r in caplog.records)
    for text in (caplog.text, json_lines, plain, tracebacks):
        assert DB_PASSWORD not in text and REDIS_PASSWORD not in text
    assert "ConnectionError: cannot reach redis://:***@cache.internal" in tracebacks
    assert "redis://:***@cache.internal:6379/0" in plain


def test_gunicorn_process_masks_without_setup_logging(tmp_path: Path) -> None:
    """`gunicorn "web:create_app()"` builds the app and nothing else: it must install the mask."""
    code = (
        "import logging, sys; logging.basicConfig(stream=sys.stdout, level=logging.INFO);"
        "import web; web.create_app(ratelimit_storage_uri='memory://', bootstrap=False);"
        "logging.getLogger('gunicorn.error').error('broker at %s', sys.argv[1])"
    )
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT),
           "VAR_DIR": str(tmp_path), "REDIS_URL": url}
    proc = subprocess.run([sys.executable, "-c", code, url], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "broker at redis://:***@127.0.0.1:1/0" in proc.stdout
    assert REDIS_PASSWORD not in proc.stdout + proc.stderr


LK_SECRET = "cmdline-secret-0123456789abcdef0123456789"


def _livekit_config() -> LiveKitServerConfig:
    return LiveKitServerConfig(port=free_port(), rtc_tcp_port=free_port(),
                               rtc_udp_port=free_port(), api_key="cmdkey", api_secret=LK_SECRET)


def test_livekit_secret_is_not_on_the_command_line() -> None:
    require_livekit_server()
    cfg = _livekit_config()
    command = " ".join(livekit_server_command(cfg))
    assert LK_SECRET not in command and "cmdkey" not in command
    assert LK_SECRET in livekit_server_env(cfg, base={})["LIVEKIT_CONFIG"]  # where it goes instead


@pytest.mark.integration  # starts a real livekit-server
def test_running_livekit_server_shows_no_secret(tmp_path: Path) -> None:
    require_livekit_server()
    cfg = _livekit_config()
    proc = start_livekit_server(cfg, log_path=tmp_path / "lk.log")  # opens cfg.port: config read
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert LK_SECRET not in cmdline and "cmdkey" not in cmdline
        assert oct(os.stat(f"/proc/{proc.pid}/environ").st_mode & 0o777) == "0o400"
    finally:
        # Its shutdown is not under test: livekit-server drains for long after one SIGTERM.
        stop_process(proc, timeout=1)


def test_flower_password_is_not_on_the_command_line() -> None:
    procfile = (PROJECT_ROOT / "Procfile").read_text()
    flower = next(line for line in procfile.splitlines() if line.startswith("flower:"))
    assert "basic-auth" not in flower and "FLOWER_BASIC_AUTH" not in flower
