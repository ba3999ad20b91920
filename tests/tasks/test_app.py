"""The Celery app: configuration, routing (checked on a real one-queue worker), discovery."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import TranscriptReport
from tasks.app import BATCH_QUEUE, LIVE_QUEUE, make_celery
from tests.tasks.conftest import start_worker, wait_for, wait_worker_ready
from tests.tasks.helpers import new_session

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.unit
def test_configuration(settings: Settings) -> None:
    app = make_celery(settings, set_as_current=False)
    conf = app.conf
    assert conf.broker_url == settings.broker.effective_url
    assert conf.result_backend == settings.broker.effective_backend
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1 and conf.task_ignore_result
    assert conf.task_time_limit > conf.task_soft_time_limit > 0
    assert set(conf.beat_schedule) == {"reconcile-sessions", "purge-old-transcripts"}
    assert app.settings is settings


@pytest.mark.unit
def test_routes_and_task_options(settings: Settings) -> None:
    app = make_celery(settings, set_as_current=False)
    app.loader.import_default_modules()
    route = app.amqp.router.route
    assert route({}, "tasks.provisioning.provision_session")["queue"].name == LIVE_QUEUE
    for name in ("tasks.transcripts.post_process_transcript", "tasks.summaries.summarize_session",
                 "tasks.usage.account_usage", "tasks.maintenance.finalize_session",
                 "tasks.maintenance.reconcile_sessions"):
        assert route({}, name)["queue"].name == BATCH_QUEUE
    for name, task in app.tasks.items():
        if not name.startswith("tasks."):
            continue
        assert task.acks_late and task.retry_jitter and task.max_retries, name
        assert task.retry_backoff and task.autoretry_for, name
        assert task.__doc__ and "twice" in task.__doc__, name  # each says why it is idempotent
    assert not app.tasks["tasks.provisioning.provision_session"].ignore_result
    assert app.tasks["tasks.usage.account_usage"].ignore_result


@pytest.mark.unit
def test_celery_finds_the_app_from_the_package() -> None:
    code = (
        "from celery.app.utils import find_app; a = find_app('tasks'); b = find_app('tasks.app');"
        "print(type(a).__name__, a is b, a.main)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["AvatarCelery", "True", "avatar"]


@pytest.mark.integration
def test_tasks_land_on_their_queue(
    valkey_url: str, tmp_path: Path, settings: Settings
) -> None:
    """A worker consuming only `batch` runs batch work and leaves provisioning queued."""
    own = load_settings(db={"url": settings.db.url},
                        broker={"url": valkey_url.rsplit("/", 1)[0] + "/7"}, _env_file=None)
    client = redis.Redis.from_url(own.broker.effective_url)
    client.flushdb()
    app = make_celery(own, set_as_current=False)
    sid = new_session(own)
    provision = app.send_task("tasks.provisioning.provision_session", args=(sid,))
    post = app.send_task("tasks.transcripts.post_process_transcript", args=(sid,))
    assert client.llen(LIVE_QUEUE) == 1 and client.llen(BATCH_QUEUE) == 1

    worker = start_worker(own, queues=BATCH_QUEUE, log=tmp_path / "batch.log", name="batch-only")
    try:
        wait_worker_ready(app, worker)
        ping = app.send_task("tasks.maintenance.ping", args=("b",)).get(timeout=60)
        assert ping["queue"] == BATCH_QUEUE

        def reported() -> bool:
            with session_scope(own.db.url) as db:
                return db.get(TranscriptReport, sid) is not None

        wait_for(reported, timeout=60, what="the batch task")
        assert client.llen(LIVE_QUEUE) == 1  # nobody consumes `live`
        msg = json.loads(client.lindex(LIVE_QUEUE, 0) or b"{}")
        assert msg["headers"]["id"] == provision.id
        assert post.id in worker.log_text() and provision.id not in worker.log_text()
    finally:
        from cli.services import stop_process

        stop_process(worker.proc)
        client.flushdb()
        client.close()
