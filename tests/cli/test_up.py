"""`avatar up` starts the embedded services, prints where to go, and leaves no orphan on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cli.services import port_open
from tests.conftest import free_port, require_netns
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


def _wait_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not printed; got:\n{''.join(seen[-30:])}")


def test_up_runs_services_and_stops_cleanly(tmp_path: Path) -> None:
    require_netns()
    lk_port, valkey_port = free_port(), free_port()
    env = dict(
        os.environ,
        LIVEKIT__PORT=str(lk_port),
        LIVEKIT__RTC_TCP_PORT=str(free_port()),
        BROKER__PORT=str(valkey_port),
        WEB__PORT=str(free_port()),
        DATABASE_URL=f"sqlite:///{tmp_path}/up.db",
        VAR_DIR=str(tmp_path),
    )
    env.pop("LIVEKIT_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--only", "nothing"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        lines = _wait_line(proc, "Ctrl-C stops everything", 90)
        text = "".join(lines)
        assert "admin UI" in text and f"ws://127.0.0.1:{lk_port}" in text
        assert port_open("127.0.0.1", lk_port) and port_open("127.0.0.1", valkey_port)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(60)
        assert proc.returncode == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"orphans left: {[p.pid for p in alive]}"
        assert not port_open("127.0.0.1", lk_port) and not port_open("127.0.0.1", valkey_port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_up_cluster_runs_two_livekit_nodes_on_one_valkey(tmp_path: Path) -> None:
    """`avatar up --cluster`: both nodes register in the shared Valkey (LiveKit's multi-node
    mode), each on its own ports; Ctrl-C stops them all."""
    import redis

    from cli.supervisor import CLUSTER_PORT_OFFSET, CLUSTER_REDIS_DB

    if os.environ.get("AVATAR_NETNS") != "1":
        pytest.skip("runs only inside scripts/netns-run")
    lk_port, valkey_port = free_port(), free_port()
    env = dict(
        os.environ,
        LIVEKIT__PORT=str(lk_port),
        LIVEKIT__RTC_TCP_PORT=str(free_port()),
        BROKER__PORT=str(valkey_port),
        WEB__PORT=str(free_port()),
        DATABASE_URL=f"sqlite:///{tmp_path}/up.db",
        VAR_DIR=str(tmp_path),
    )
    env.pop("LIVEKIT_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--cluster", "--only", "nothing"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    second = lk_port + CLUSTER_PORT_OFFSET
    try:
        text = "".join(_wait_line(proc, "Ctrl-C stops everything", 90))
        assert f"second node ws://127.0.0.1:{second}" in text
        assert port_open("127.0.0.1", lk_port) and port_open("127.0.0.1", second)
        client = redis.Redis(port=valkey_port, db=CLUSTER_REDIS_DB)
        try:
            wait_for(lambda: client.hlen("nodes") == 2, 30, "both nodes in LiveKit's registry")
        finally:
            client.close()
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(60)
        assert proc.returncode == 0
        assert not port_open("127.0.0.1", lk_port) and not port_open("127.0.0.1", second)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
