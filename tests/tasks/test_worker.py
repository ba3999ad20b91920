"""Round trips through the real broker and a real `celery -A tasks worker` subprocess."""

from __future__ import annotations

import pytest

from tasks.app import AvatarCelery
from tests.tasks.conftest import WorkerProcess

pytestmark = pytest.mark.integration


def test_ping_round_trip(sender: AvatarCelery, celery_worker: WorkerProcess) -> None:
    result = sender.send_task("tasks.maintenance.ping", args=("hello",))
    answer = result.get(timeout=60)
    assert answer["value"] == "hello"
    assert answer["hostname"].startswith("test-worker@")
    assert answer["queue"] == "batch"
