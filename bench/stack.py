"""The embedded stack a benchmark calls into: livekit-server, Valkey, SQLite and one live worker.

The same commands `avatar up` runs, on free ports, in a scratch folder; stopped on exit.
Run benchmarks that use it inside ``scripts/netns-run`` (WebRTC stays in the namespace).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.services import (
    LiveKitServerConfig,
    free_port,
    start_livekit_server,
    start_valkey,
    stop_process,
)
from config.settings import Settings, load_settings
from store.db import session_scope, upgrade_db


@dataclass
class Stack:
    settings: Settings  # what a caller needs: the server's URL and keys, the database
    work: Path
    db_url: str
    # the stack's own processes by name (livekit, valkey, live, and celery when asked for)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


def require_netns() -> None:
    if os.environ.get("AVATAR_NETNS") != "1":
        sys.exit("run inside scripts/netns-run (WebRTC stays in a private network namespace)")


@contextmanager
def embedded_stack(
    name: str, worker_env: dict[str, str] | None = None, *, celery: bool = False
) -> Iterator[Stack]:
    """Servers plus a live worker capped at one session, with ``worker_env`` on top (it may
    change the cap).

    With ``celery``, a Celery worker too (one solo process, both queues), so sessions are
    finalised and billed as in production.
    """
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"{name}-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{work / 'bench.db'}"
    upgrade_db(db_url)
    secret = "bench-secret-0123456789abcdef0123456789abcdef"
    cfg = LiveKitServerConfig.on_free_ports(api_key="benchkey", api_secret=secret)
    lk = start_livekit_server(cfg, log_path=work / "livekit.log")
    valkey_port = free_port()
    valkey = start_valkey(valkey_port, work / "valkey")
    url = f"ws://127.0.0.1:{cfg.port}"
    env = dict(os.environ, LIVEKIT_URL=url, LIVEKIT_API_KEY="benchkey", LIVEKIT_API_SECRET=secret,
               DATABASE_URL=db_url, VAR_DIR=str(work), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               LIVE_HEALTH_PORT=str(free_port()), LIMITS__MAX_CONCURRENT_SESSIONS="1",
               LIMITS__CALLER_GRACE_SECONDS="1", REDIS_URL=f"redis://127.0.0.1:{valkey_port}/0")
    env.update(worker_env or {})  # may override the defaults above (the cap, for bench.load)
    log = open(work / "live.log", "wb")
    live = subprocess.Popen([sys.executable, "-m", "live.worker", "start"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    procs = {"livekit": lk, "valkey": valkey, "live": live}
    celery_log = open(work / "celery.log", "wb") if celery else None
    if celery_log is not None:
        procs["celery"] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "live,batch",
             "--pool", "solo", "--loglevel", "INFO", "-n", f"{name}@%h"],
            env=env, stdout=celery_log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"registered worker" not in (work / "live.log").read_bytes():
            if time.monotonic() > deadline or live.poll() is not None:
                sys.exit("live worker did not register; see " + str(work / "live.log"))
            time.sleep(0.2)
        settings = load_settings(livekit={"url": url, "api_key": "benchkey", "api_secret": secret},
                                 db={"url": db_url}, var_dir=work, _env_file=None,
                                 broker={"url": f"redis://127.0.0.1:{valkey_port}/0"})
        yield Stack(settings=settings, work=work, db_url=db_url, processes=procs)
    finally:
        stop_process(live, timeout=20)
        if "celery" in procs:
            stop_process(procs["celery"], timeout=20)
        if celery_log is not None:
            celery_log.close()
        stop_process(lk)
        stop_process(valkey)
        log.close()


def wait_session_ended(db_url: str, session_id: str | None, timeout: float = 60.0) -> None:
    from store.models import AgentSessionRecord

    deadline = time.monotonic() + timeout
    while session_id and time.monotonic() < deadline:
        with session_scope(db_url) as db:
            rec = db.get(AgentSessionRecord, session_id)
            if rec is None or not rec.is_open:
                return
        time.sleep(0.2)


async def wait_room_empty(settings: Any, room: str, timeout: float = 60.0) -> None:
    """With a cap of one, the next call needs the agent out of the room first (LiveKit drops a
    dispatch that no worker accepts)."""
    from livekit import api

    key = settings.livekit.api_key.get_secret_value()
    secret = settings.livekit.api_secret.get_secret_value()
    deadline = time.monotonic() + timeout
    async with api.LiveKitAPI(settings.livekit.http_url, key, secret) as lk:
        while time.monotonic() < deadline:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            if not rooms.rooms or rooms.rooms[0].num_participants == 0:
                return
            await asyncio.sleep(0.2)
