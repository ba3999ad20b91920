"""The web process when a dependency is down: a clear 503, never a 500 or a half-made session.

The broker is a real Valkey the test stops and starts again; the database is the test's
SQLite file, locked by another connection holding a write transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from flask import Flask
from sqlalchemy import func, select

from cli.services import free_port, start_valkey, stop_process
from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import AgentSessionRecord
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from web.auth import create_api_token
from web.backend import Backend


@dataclass
class Broker:
    port: int
    data: Path
    proc: object = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = start_valkey(self.port, self.data, log_path=self.data / "valkey.log")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)  # type: ignore[arg-type]
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(free_port(), tmp_path / "valkey")
    b.data.mkdir()
    yield b
    b.stop()


def _sessions(db_url: str) -> int:
    with session_scope(db_url) as db:
        return int(db.scalar(select(func.count()).select_from(AgentSessionRecord)) or 0)


def _queued(url: str, queue: str = "live") -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.llen(queue))
    finally:
        client.close()


@pytest.fixture
def real_app(db_url: str, tmp_path: Path, broker: Broker) -> Callable[[], tuple[Flask, Settings]]:
    """The app with the real back office seam (it enqueues through Celery to `broker`)."""

    def make() -> tuple[Flask, Settings]:
        from web import create_app

        settings = load_settings(
            db={"url": db_url},
            broker={"url": broker.url},
            livekit={"api_key": TEST_API_KEY, "api_secret": TEST_API_SECRET},
            var_dir=tmp_path,
            _env_file=None,
        )
        app = create_app(settings, backend=Backend())
        app.config["TESTING"] = True
        return app, settings

    return make


@pytest.mark.integration
def test_create_session_with_broker_down_is_503_and_stores_nothing(
    real_app: Callable[[], tuple[Flask, Settings]], broker: Broker, db_url: str
) -> None:
    app, _settings = real_app()
    with session_scope(db_url) as db:
        bearer = {"Authorization": f"Bearer {create_api_token(db, 'faults')}"}
    client = app.test_client()

    # Valkey was never started here: nothing listens on its port.
    res = client.post("/api/v1/sessions", json={"room": "down-room"},
                      headers={**bearer, "Idempotency-Key": "k-1"})
    assert res.status_code == 503, res.json
    assert res.json["error"]["code"] == "broker_unavailable"
    assert "not created" in res.json["error"]["message"]
    assert res.headers["Retry-After"]
    assert _sessions(db_url) == 0  # no half-made session waits for a provisioning

    # The broker is back: the same request (same key) creates and enqueues it, once.
    broker.start()
    again = client.post("/api/v1/sessions", json={"room": "down-room"},
                        headers={**bearer, "Idempotency-Key": "k-1"})
    assert again.status_code == 201, again.json
    assert _sessions(db_url) == 1
    assert _queued(broker.url) == 1

    # Stopped while running (it had connections open): same answer, nothing stored.
    broker.stop()
    res = client.post("/api/v1/sessions", json={}, headers=bearer)
    assert res.status_code == 503 and res.json["error"]["code"] == "broker_unavailable"
    assert _sessions(db_url) == 1


@pytest.mark.integration
@pytest.mark.sqlite_only
def test_locked_database_is_503_not_500(
    real_app: Callable[[], tuple[Flask, Settings]], broker: Broker, db_url: str
) -> None:
    app, _settings = real_app()
    with session_scope(db_url) as db:
        bearer = {"Authorization": f"Bearer {create_api_token(db, 'faults')}"}
    broker.start()
    client = app.test_client()
    path = db_url.split("///", 1)[1]
    holder = sqlite3.connect(path, timeout=1, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process writing: the write lock is taken
        holder.execute("UPDATE api_tokens SET name = name")
        res = client.post("/api/v1/sessions", json={"room": "locked"}, headers=bearer)
        assert res.status_code == 503, res.get_data(as_text=True)
        assert res.json["error"]["code"] == "database_unavailable"
        assert res.headers["Retry-After"]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    ok = client.post("/api/v1/sessions", json={"room": "locked"}, headers=bearer)
    assert ok.status_code == 201, ok.json


@pytest.mark.integration
@pytest.mark.postgres_only
def test_stopped_postgresql_is_503_not_500(
    real_app: Callable[[], tuple[Flask, Settings]],
    broker: Broker,
    db_url: str,
    request: pytest.FixtureRequest,
) -> None:
    """PostgreSQL shut down (its pooled connections cut, new ones refused): pages and API
    answer 503 `database_unavailable`, and work again once it is back."""
    from tests.postgres import PostgresServer

    server: PostgresServer = request.getfixturevalue("postgres")
    app, _settings = real_app()
    with session_scope(db_url) as db:
        bearer = {"Authorization": f"Bearer {create_api_token(db, 'faults')}"}
    broker.start()
    client = app.test_client()
    assert client.get("/api/v1/sessions/none", headers=bearer).status_code == 404  # pool in use
    server.shut_down()
    try:
        for res in (
            client.post("/api/v1/sessions", json={"room": "pg-down"}, headers=bearer),
            client.get("/api/v1/sessions/none", headers=bearer),
        ):
            assert res.status_code == 503, (res.request.path, res.get_data(as_text=True)[:300])
            assert res.json["error"]["code"] == "database_unavailable"
            assert res.headers["Retry-After"]
    finally:
        server.start_again()
    ok = client.post("/api/v1/sessions", json={"room": "pg-down"}, headers=bearer)
    assert ok.status_code == 201, ok.json
    assert _sessions(db_url) == 1
