"""Public default secrets are refused outside the embedded default (issue #12, item 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import (
    PROJECT_ROOT,
    ConfigError,
    check_deployment_secrets,
    is_local_only,
    load_settings,
)

pytestmark = pytest.mark.unit

STRONG = {
    "web": {"secret_key": "w" * 40, "flower_password": "f" * 20},
    "livekit": {"api_key": "APIxyz", "api_secret": "s" * 40},
}


def test_embedded_default_needs_no_configuration() -> None:
    s = load_settings(_env_file=None)
    assert is_local_only(s)
    check_deployment_secrets(s, flower=True)  # `avatar up` and the tests start as they are


@pytest.mark.parametrize(
    "where",
    [
        {"livekit": {"url": "wss://avatar.livekit.cloud"}},
        {"broker": {"url": "redis://cache.internal:6379/0"}},
        {"web": {"public_url": "https://avatar.example.com"}},
        {"web": {"host": "0.0.0.0"}},
    ],
)
def test_deployment_with_public_defaults_is_refused(where: dict) -> None:  # type: ignore[type-arg]
    s = load_settings(**where, _env_file=None)
    assert not is_local_only(s)
    with pytest.raises(ConfigError) as err:
        check_deployment_secrets(s, flower=True)
    lines = str(err.value).splitlines()
    named = {line.split(":")[1].strip() for line in lines}
    assert named == {"WEB__SECRET_KEY", "LIVEKIT__API_KEY", "LIVEKIT__API_SECRET",
                     "WEB__FLOWER_PASSWORD"}
    assert all("public default" in line for line in lines)
    assert "dev-insecure" not in str(err.value) and "change-me" not in str(err.value)


def test_each_secret_is_checked_on_its_own() -> None:
    base = {"livekit": {**STRONG["livekit"], "url": "wss://lk.example.com"}, "web": dict(STRONG["web"])}
    check_deployment_secrets(load_settings(**base, _env_file=None), flower=True)
    weak = {**base, "web": {**STRONG["web"], "secret_key": "dev-insecure-secret-key-change-me"}}
    with pytest.raises(ConfigError, match=r"^config error: WEB__SECRET_KEY: is the public default"):
        check_deployment_secrets(load_settings(**weak, _env_file=None))
    dev_pair = {**base, "livekit": {"url": "wss://lk.example.com", "api_key": "k", "api_secret": "secret"}}
    with pytest.raises(ConfigError, match="LIVEKIT__API_SECRET"):
        check_deployment_secrets(load_settings(**dev_pair, _env_file=None))
    # Flower's password matters only where Flower runs
    no_flower = {**base, "web": {"secret_key": "w" * 40}}
    check_deployment_secrets(load_settings(**no_flower, _env_file=None))
    with pytest.raises(ConfigError, match="WEB__FLOWER_PASSWORD"):
        check_deployment_secrets(load_settings(**no_flower, _env_file=None), flower=True)


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_ROOT),
            "VAR_DIR": str(tmp_path)}
    return subprocess.run([sys.executable, *args], env={**base, **env}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def test_processes_refuse_to_start(tmp_path: Path) -> None:
    """The web app (gunicorn builds it with no arguments) and the CLI stop with the variable."""
    deployed = {"LIVEKIT_URL": "wss://lk.example.com", "LIVEKIT_API_KEY": "APIxyz",
                "LIVEKIT_API_SECRET": "s" * 40}
    web = _run(["-c", "import web; web.create_app()"], tmp_path, **deployed)
    assert web.returncode != 0
    assert "WEB__SECRET_KEY: is the public default" in web.stderr
    cli = _run(["-m", "cli.main", "token", "create", "ci"], tmp_path, **deployed)
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines() == [
        "config error: WEB__SECRET_KEY: is the public default; set a long random value "
        "(only the embedded local stack may use the defaults)"
    ]


def test_doctor_warns_locally_and_fails_in_deployment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.doctor import run_checks

    monkeypatch.chdir(tmp_path)
    for var in ("LIVEKIT_URL", "REDIS_URL", "WEB__PUBLIC_URL", "WEB__HOST", "SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    lines: list[str] = []
    run_checks(lines.append)
    (local,) = [line for line in lines if "] secrets " in line]
    assert local.startswith("[warn]") and "WEB__SECRET_KEY" in local
    monkeypatch.setenv("LIVEKIT_URL", "wss://lk.example.com")
    lines.clear()
    assert run_checks(lines.append) is False
    (deployed,) = [line for line in lines if "] secrets " in line]
    assert deployed.startswith("[FAIL]") and "LIVEKIT__API_SECRET" in deployed


def test_flower_refuses_a_public_password_outside_the_local_stack(tmp_path: Path) -> None:
    deployed = {"LIVEKIT_URL": "wss://lk.example.com", "LIVEKIT_API_KEY": "APIxyz",
                "LIVEKIT_API_SECRET": "s" * 40, "WEB__SECRET_KEY": "w" * 40}
    for creds in ("admin:change-me", ""):
        env = {**deployed, "FLOWER_BASIC_AUTH": creds} if creds else deployed
        proc = _run(["-m", "cli.main", "flower"], tmp_path, **env)
        assert proc.returncode == 2
        assert "WEB__FLOWER_PASSWORD: is the public default" in proc.stderr
    odd = _run(["-m", "cli.main", "flower"], tmp_path, **deployed, FLOWER_BASIC_AUTH="nocolon")
    assert odd.returncode == 2 and "FLOWER_BASIC_AUTH: expected user:password" in odd.stderr
