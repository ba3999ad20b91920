"""The live worker reaches the back office by task name, without importing `tasks`."""

from __future__ import annotations

import json
from base64 import b64decode

import pytest
import redis

from config.settings import load_settings
from live import backoffice
from tasks.app import BATCH_QUEUE, make_celery


@pytest.mark.unit
def test_the_name_and_queue_are_the_back_offices() -> None:
    app = make_celery(load_settings(_env_file=None), set_as_current=False)
    app.loader.import_default_modules()
    assert backoffice.FINALIZE_TASK in app.tasks
    assert backoffice.BATCH_QUEUE == BATCH_QUEUE
    route = app.amqp.router.route({}, backoffice.FINALIZE_TASK)
    assert route["queue"].name == BATCH_QUEUE
    # a job that lost its room asks for its resume the same way
    assert backoffice.RESUME_TASK in app.tasks
    assert app.amqp.router.route({}, backoffice.RESUME_TASK)["queue"].name == backoffice.LIVE_QUEUE


@pytest.mark.integration
def test_finalisation_lands_on_the_batch_queue(valkey_url: str) -> None:
    url = valkey_url.rsplit("/", 1)[0] + "/14"  # no Celery worker of another test consumes it
    settings = load_settings(_env_file=None, broker={"url": url})
    client = redis.Redis.from_url(url)
    client.flushdb()
    try:
        assert backoffice.request_finalize(settings, "s-1") is True
        (raw,) = client.lrange(BATCH_QUEUE, 0, -1)
        msg = json.loads(raw)
        assert msg["headers"]["task"] == backoffice.FINALIZE_TASK
        assert json.loads(b64decode(msg["body"]))[0] == ["s-1"]
    finally:
        client.flushdb()
        client.close()


@pytest.mark.unit
def test_a_broker_that_is_down_is_reported_not_raised() -> None:
    from cli.services import free_port

    settings = load_settings(_env_file=None, broker={"url": f"redis://127.0.0.1:{free_port()}/0"})
    assert backoffice.request_finalize(settings, "s-1") is False
