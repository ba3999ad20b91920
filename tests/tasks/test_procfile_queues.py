"""The Procfile's Celery processes: provisioning has a worker of its own, batch work another.

With one worker on both queues, a launch waits for a free slot among the finished calls'
post-processing and summaries (``bench.backoffice`` measures how long). Here the Procfile's
own ``worker`` and ``batch`` lines run as `avatar up` runs them, against a real Valkey,
livekit-server and SQLite: provisioning goes to the one, batch work to the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from celery import Celery

from cli.services import stop_process
from cli.supervisor import read_procfile
from config.settings import load_settings
from store.db import session_scope, upgrade_db
from store.models import AgentSessionRecord, SessionStatus, Summary, TranscriptLine, utcnow
from tests.conftest import LiveKitServer, stack_env
from tests.tasks.helpers import new_session
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

BACKLOG = 8  # finished calls queued before the launch


@pytest.fixture
def procfile_workers(
    livekit_server: LiveKitServer, valkey_url: str, tmp_path: Path
) -> Iterator[tuple[str, str, dict[str, Path]]]:
    redis_url = valkey_url.rsplit("/", 1)[0] + "/4"  # its own database (the cluster fixture, session-wide, has 12 and 13)
    db_url = f"sqlite:///{tmp_path / 'procfile.db'}"
    upgrade_db(db_url)
    env = stack_env(livekit_server, redis_url, db_url, tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as `avatar up`
    lines = read_procfile()
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "batch")}
    procs = []
    for name, log in logs.items():
        with open(log, "wb") as out:
            procs.append(subprocess.Popen(
                ["bash", "-c", f"exec {lines[name]}"], env=env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                cwd=Path(__file__).resolve().parents[2],
            ))
    try:
        for name, log in logs.items():
            wait_for(lambda p=log: "ready." in p.read_text(), 120, f"the Procfile's {name}")
        yield redis_url, db_url, logs
    finally:
        for proc in procs:
            stop_process(proc, timeout=20)


def _finished_call(db_url: str, n: int) -> str:
    now = utcnow()
    with session_scope(db_url) as db:
        rec = AgentSessionRecord(
            room=f"pf-done-{n}", status=SessionStatus.ENDED, source="cli",
            started_at=now - timedelta(seconds=30), ended_at=now, end_reason="caller_left",
        )
        db.add(rec)
        db.flush()
        for i, (speaker, text) in enumerate((
            ("agent", "Hello! How can I help you today?"),
            ("user", f"I would like to order {n + 2} loaves of rye bread for Friday."),
            ("agent", f"Of course, {n + 2} loaves of rye bread for Friday morning."),
        )):
            db.add(TranscriptLine(session_id=rec.id, item_id=f"i{i}", speaker=speaker, text=text,
                                  started_at=now - timedelta(seconds=20 - 5 * i),
                                  ended_at=now - timedelta(seconds=17 - 5 * i)))
        return rec.id


def test_the_procfile_provisions_in_its_own_worker_while_batch_work_queues(
    procfile_workers: tuple[str, str, dict[str, Path]], livekit_server: LiveKitServer,
) -> None:
    redis_url, db_url, logs = procfile_workers
    sender = Celery("procfile-test", broker=redis_url, set_as_current=False)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    backlog = [_finished_call(db_url, n) for n in range(BACKLOG)]
    for sid in backlog:  # what the live worker sends when a call ends
        sender.send_task("tasks.maintenance.finalize_session", args=(sid,), queue="batch")

    settings = load_settings(
        _env_file=None, db={"url": db_url}, broker={"url": redis_url},
        livekit={"url": livekit_server.url, "api_key": livekit_server.api_key,
                 "api_secret": livekit_server.api_secret},
    )
    launched = new_session(settings, room="pf-launch")
    sender.send_task("tasks.provisioning.provision_session", args=(launched,), queue="live")

    def dispatched() -> bool:
        with session_scope(db_url) as db:
            rec = db.get(AgentSessionRecord, launched)
            return rec is not None and rec.status == SessionStatus.DISPATCHED

    wait_for(dispatched, 60, "the launch to be provisioned")
    with session_scope(db_url) as db:
        summarised = sum(db.get(Summary, sid) is not None for sid in backlog)
    assert summarised < BACKLOG, "the launch was provisioned only after the whole backlog"
    ran = "Task tasks.provisioning.provision_session["  # the line a worker logs on receipt
    assert ran in logs["worker"].read_text()
    assert ran not in logs["batch"].read_text()
    # and the backlog is not lost: every finished call is summarised in the end
    wait_for(lambda: all(_summarised(db_url, sid) for sid in backlog), 300, "the backlog")


def _summarised(db_url: str, sid: str) -> bool:
    with session_scope(db_url) as db:
        return db.get(Summary, sid) is not None
