"""Fixtures for the web tests: an app on a fresh migrated database, a logged-in client, API
tokens, and a recording back office (enqueue / end) so views are tested without a broker.

Session creation and token minting use the real `tasks.provisioning` functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash
from werkzeug.test import TestResponse

from config.settings import Settings, load_settings
from store.db import session_scope
from store.models import (
    AdminUser,
    AgentSessionRecord,
    SessionCost,
    SessionStatus,
    Summary,
    TranscriptLine,
    TranscriptReport,
    TurnMetric,
    UsageRecord,
)
from tests.conftest import TEST_API_KEY, TEST_API_SECRET
from web import create_app
from web.auth import create_api_token
from web.backend import Backend

ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "correct horse battery"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Fresh database; a LiveKit secret long enough for HS256 (no key-length warning)."""
    return load_settings(
        db={"url": db_url},
        livekit={"api_key": TEST_API_KEY, "api_secret": TEST_API_SECRET},
        var_dir=tmp_path,
        _env_file=None,
    )


@dataclass
class Calls:
    """What the views asked the back office to do, with the session status seen at the time."""

    enqueued: list[tuple[str, str | None]] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    db_url: str = ""

    def enqueue(self, settings: Settings, session_id: str) -> None:
        # Read through a separate connection: the row must be committed before enqueueing.
        with session_scope(settings.db.url) as db:
            rec = db.get(AgentSessionRecord, session_id)
            self.enqueued.append((session_id, rec.status if rec else None))

    def end(self, settings: Settings, record: AgentSessionRecord) -> None:
        self.ended.append(record.id)


@pytest.fixture
def calls(settings: Settings) -> Calls:
    return Calls(db_url=settings.db.url)


@pytest.fixture
def make_app(settings: Settings, calls: Calls) -> Callable[..., Flask]:
    def _make(s: Settings | None = None, **kwargs: Any) -> Flask:
        backend = Backend(enqueue_provision=calls.enqueue, end_session=calls.end)
        kwargs.setdefault("backend", backend)
        app = create_app(s or settings, **kwargs)
        app.config["TESTING"] = True
        return app

    return _make


@pytest.fixture(scope="session")
def admin_password_hash() -> str:
    """The operator's password hashed once per test process, as `create_admin` hashes it
    (scrypt, about 0.15 s a hash by design); logins still check it the real way."""
    return generate_password_hash(ADMIN_PASSWORD)


@pytest.fixture
def app(make_app: Callable[..., Flask], settings: Settings, admin_password_hash: str) -> Flask:
    """The app with one operator (`create_admin` itself: tests/web/test_auth.py)."""
    with session_scope(settings.db.url) as db:
        db.add(AdminUser(email=ADMIN_EMAIL, password_hash=admin_password_hash))
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


class AuthActions:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def csrf(self, path: str = "/login") -> str:
        page = self.client.get(path)
        m = CSRF_RE.search(page.get_data(as_text=True))
        assert m, f"no CSRF token on {path}"
        return m.group(1)

    def login(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD) -> TestResponse:
        return self.client.post(
            "/login", data={"email": email, "password": password, "csrf_token": self.csrf()}
        )

    def logout(self) -> TestResponse:
        return self.client.post("/logout", data={"csrf_token": self.csrf("/")})


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)


@pytest.fixture
def logged_in(client: FlaskClient, auth: AuthActions) -> FlaskClient:
    assert auth.login().status_code == 302
    return client


@pytest.fixture
def api_token(settings: Settings) -> str:
    with session_scope(settings.db.url) as db:
        return create_api_token(db, "tests")


@pytest.fixture
def bearer(api_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_token}"}


# --------------------------------------------------------------------------- data


def add_session(
    db_url: str,
    *,
    room: str = "demo-room",
    status: str = SessionStatus.ACTIVE,
    created_at: datetime | None = None,
    lines: list[tuple[str, str]] | None = None,
    **kw: Any,
) -> str:
    """Insert a session (and transcript lines) directly, as the workers would."""
    created = created_at or datetime.now(UTC)
    with session_scope(db_url) as db:
        rec = AgentSessionRecord(
            room=room, status=status, source=kw.pop("source", "api"), created_at=created,
            spec={"instructions": "Be brief.", "greeting": "Hi there", "language": "en"}, **kw,
        )
        if status in (SessionStatus.ACTIVE, SessionStatus.ENDED):
            rec.started_at = created + timedelta(seconds=3)
        if status == SessionStatus.ENDED:
            rec.ended_at = created + timedelta(minutes=4, seconds=12)
        db.add(rec)
        db.flush()
        for i, (speaker, text) in enumerate(lines or []):
            db.add(
                TranscriptLine(
                    session_id=rec.id, item_id=f"item-{i}", speaker=speaker, text=text,
                    started_at=created + timedelta(seconds=5 + 4 * i),
                )
            )
        return rec.id


def add_costs(db_url: str, session_id: str, day: date, items: dict[tuple[str, str], tuple[float, float]]) -> None:
    """items: (provider, metric) -> (quantity, unit price)."""
    with session_scope(db_url) as db:
        for (provider, metric), (qty, price) in items.items():
            db.add(UsageRecord(session_id=session_id, provider=provider, metric=metric, quantity=qty))
            db.add(
                SessionCost(
                    session_id=session_id, day=day, provider=provider, metric=metric,
                    quantity=qty, unit_price=price, cost=qty * price,
                )
            )


def add_turns(db_url: str, session_id: str, n: int) -> None:
    with session_scope(db_url) as db:
        for i in range(n):
            db.add(
                TurnMetric(
                    session_id=session_id, item_id=f"turn-{i}", end_of_utterance_delay=0.5 + 0.03 * i,
                    transcription_delay=0.18 + 0.01 * (i % 3), llm_ttft=0.32 + 0.05 * (i % 4),
                    tts_ttfb=0.21 + 0.02 * (i % 2), avatar_first_frame=0.08,
                    e2e_latency=1.25 + 0.1 * (i % 4),
                )
            )


def add_summary_and_report(db_url: str, session_id: str, *, text: str = "The caller asked about opening hours.") -> None:
    with session_scope(db_url) as db:
        db.add(
            Summary(
                session_id=session_id, model="smollm2-135m", summary=text,
                key_points=["Opening hours", "Weekend service"], action_items=["Send the brochure"],
                sentiment="positive", source_line_count=4,
            )
        )
        db.add(
            TranscriptReport(
                session_id=session_id, lines=[{"speaker": "user", "text": "hi"}], stats={"turns": 2},
                export_json='{"lines": []}', export_vtt="WEBVTT\n\n00:00.000 --> 00:01.000\nhi\n",
                export_srt="1\n00:00:00,000 --> 00:00:01,000\nhi\n", export_markdown="# Transcript\n",
                source_line_count=4,
            )
        )


@pytest.fixture
def seeded(settings: Settings) -> Iterator[dict[str, str]]:
    """A realistic history: sessions over two weeks, costs, latencies, one finished call."""
    url = settings.db.url
    now = datetime.now(UTC).replace(microsecond=0)
    ids: dict[str, str] = {}
    conversation = [
        ("agent", "Hello! I'm Ava. How can I help you today?"),
        ("user", "Hi, when are you open on Saturdays?"),
        ("agent", "We're open from nine to five on Saturdays."),
        ("user", "Great, and on Sundays?"),
        ("agent", "On Sundays we're closed, but the website takes orders all day."),
    ]
    ids["ended"] = add_session(url, room="support-demo", status=SessionStatus.ENDED,
                               created_at=now - timedelta(hours=2), lines=conversation,
                               source="admin")
    add_costs(url, ids["ended"], (now - timedelta(hours=2)).date(), {
        ("openai", "llm_input_tokens"): (5200, 0.15 / 1e6),
        ("openai", "llm_output_tokens"): (640, 0.6 / 1e6),
        ("tavus", "avatar_seconds"): (252, 0.32 / 60),
        ("livekit", "room_minutes"): (4.2, 0.0005),
    })
    add_turns(url, ids["ended"], 6)
    add_summary_and_report(url, ids["ended"])
    ids["active"] = add_session(url, room="sales-floor", status=SessionStatus.ACTIVE,
                                created_at=now - timedelta(minutes=3), lines=conversation[:2])
    ids["failed"] = add_session(url, room="lobby", status=SessionStatus.FAILED,
                                created_at=now - timedelta(hours=5), error="LiveKit refused: 403",
                                source="webhook")
    for d in range(1, 14):
        for k in range(d % 4 + 1):
            day = now - timedelta(days=d, hours=k)
            sid = add_session(url, room=f"room-{d}-{k}", status=SessionStatus.ENDED, created_at=day,
                              stt_provider="assemblyai" if k % 2 else "local")
            add_costs(url, sid, day.date(), {
                ("assemblyai" if k % 2 else "local", "stt_audio_seconds"): (120 + 10 * k, 0.15 / 3600),
                ("tavus", "avatar_seconds"): (100 + 30 * d, 0.32 / 60),
            })
            if d < 7:
                add_turns(url, sid, 2)
    yield ids
