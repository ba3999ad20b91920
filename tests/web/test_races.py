"""The API under concurrent requests (several threads, each its own connection): SQLite, and
PostgreSQL with `--db postgresql`, where the requests' transactions really overlap."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask
from sqlalchemy import func, select

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord

from .conftest import Calls

pytestmark = pytest.mark.unit
THREADS = 6


def test_one_idempotency_key_sent_at_once_creates_and_enqueues_once(
    app: Flask, bearer: dict[str, str], calls: Calls, settings: Settings
) -> None:
    """A client that retries before its first request has answered gets the same session."""
    gate = threading.Barrier(THREADS, timeout=30)
    headers = {**bearer, "Idempotency-Key": "order-race"}

    def post(_: int) -> tuple[int, str]:
        client = app.test_client()
        gate.wait()
        res = client.post("/api/v1/sessions", json={"room": "race-room"}, headers=headers)
        assert res.json is not None, res.get_data(as_text=True)
        return res.status_code, res.json["session"]["id"]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(post, range(THREADS)))

    assert sorted(code for code, _ in results) == [200] * (THREADS - 1) + [201]
    assert len({sid for _, sid in results}) == 1
    assert [sid for sid, _ in calls.enqueued] == [results[0][1]]
    with session_scope(settings.db.url) as db:
        assert db.scalar(select(func.count()).select_from(AgentSessionRecord)) == 1
