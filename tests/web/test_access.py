"""Who gets in (issue #12, items 6 and 7): token expiry, revocation and scopes, per-token
idempotency, session quotas and login throttling counted in a store every process shares,
client addresses behind a trusted proxy, secure cookies and HSTS outside the local stack."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, ApiToken, utcnow
from web.auth import AuthError, create_api_token, revoke_api_token

from .conftest import ADMIN_PASSWORD, AuthActions, Calls

pytestmark = pytest.mark.unit


def _token(settings: Settings, **kw: object) -> dict[str, str]:
    with session_scope(settings.db.url) as db:
        token = create_api_token(db, f"t-{uuid.uuid4().hex[:6]}", **kw)  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {token}"}


def _count(settings: Settings) -> int:
    with session_scope(settings.db.url) as db:
        return int(db.scalar(select(func.count()).select_from(AgentSessionRecord)) or 0)


def _with_web(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"web": settings.web.model_copy(update=changes)})


# --------------------------------------------------------------------------- API tokens


def test_expired_token_is_401(client: FlaskClient, settings: Settings) -> None:
    headers = _token(settings, expires_in_days=1)
    assert client.get("/api/v1/sessions/x", headers=headers).status_code == 404  # valid now
    with session_scope(settings.db.url) as db:
        for row in db.scalars(select(ApiToken)):
            row.expires_at = utcnow() - timedelta(seconds=1)
    res = client.post("/api/v1/sessions", json={}, headers=headers)
    assert res.status_code == 401
    assert res.json["error"]["message"] == "invalid, expired or revoked API token"
    assert _count(settings) == 0


def test_revoked_token_is_401(client: FlaskClient, settings: Settings) -> None:
    headers = _token(settings)
    token = headers["Authorization"].split()[1]
    with session_scope(settings.db.url) as db:
        row = revoke_api_token(db, token)
        assert row.revoked and row.revoked_at is not None
    assert client.post("/api/v1/sessions", json={}, headers=headers).status_code == 401
    assert _count(settings) == 0


def test_scopes(client: FlaskClient, settings: Settings, calls: Calls) -> None:
    reader = _token(settings, scopes=["sessions:read"])
    res = client.post("/api/v1/sessions", json={}, headers=reader)
    assert res.status_code == 403
    assert res.json["error"] == {"code": "forbidden", "fields": {},
                                 "message": "this token lacks the sessions:write scope"}
    assert calls.enqueued == [] and _count(settings) == 0
    writer = _token(settings, scopes=["sessions:write"])
    sid = client.post("/api/v1/sessions", json={}, headers=writer).json["session"]["id"]
    assert client.get(f"/api/v1/sessions/{sid}", headers=writer).status_code == 403
    assert client.get(f"/api/v1/sessions/{sid}", headers=reader).status_code == 200


def test_token_options_are_checked(settings: Settings) -> None:
    with session_scope(settings.db.url) as db:
        with pytest.raises(AuthError, match="scopes must be some of"):
            create_api_token(db, "x", scopes=["admin"])
        with pytest.raises(AuthError, match="expiry must be between"):
            create_api_token(db, "x", expires_in_days=0)
        with pytest.raises(AuthError, match="no token matches"):
            revoke_api_token(db, "nobody")


def test_cli_token_create_list_revoke(
    settings: Settings, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.main import app as cli

    monkeypatch.setenv("DATABASE_URL", settings.db.url)
    runner = CliRunner()
    made = runner.invoke(cli, ["token", "create", "ci", "--expires-in-days", "7",
                               "--scope", "sessions:read"])
    assert made.exit_code == 0, made.output
    token = made.output.strip()
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/api/v1/sessions", json={}, headers=headers).status_code == 403
    listed = runner.invoke(cli, ["token", "list"])
    assert "ci\t" in listed.output and "sessions:read\t" in listed.output
    assert token not in listed.output and "active" in listed.output
    bad = runner.invoke(cli, ["token", "create", "x", "--scope", "root"])
    assert bad.exit_code == 2 and "scopes must be some of" in bad.output
    revoked = runner.invoke(cli, ["token", "revoke", "ci"])
    assert revoked.exit_code == 0 and "revoked ci" in revoked.output
    assert client.get("/api/v1/sessions/x", headers=headers).status_code == 401


def test_idempotency_keys_are_per_token(client: FlaskClient, settings: Settings, calls: Calls) -> None:
    a, b = _token(settings), _token(settings)
    first = client.post("/api/v1/sessions", json={}, headers={**a, "Idempotency-Key": "k-1"})
    other = client.post("/api/v1/sessions", json={}, headers={**b, "Idempotency-Key": "k-1"})
    again = client.post("/api/v1/sessions", json={}, headers={**a, "Idempotency-Key": "k-1"})
    assert (first.status_code, other.status_code, again.status_code) == (201, 201, 200)
    assert other.json["session"]["id"] != first.json["session"]["id"]  # b cannot read a's session
    assert again.json["session"]["id"] == first.json["session"]["id"]
    assert len(calls.enqueued) == 2


# --------------------------------------------------------------------------- one agent per room


def test_same_room_without_key_gets_the_open_session(
    client: FlaskClient, bearer: dict[str, str], calls: Calls, settings: Settings
) -> None:
    body = {"room": "busy-room", "greeting": "Hi"}
    first = client.post("/api/v1/sessions", json=body, headers=bearer)
    again = client.post("/api/v1/sessions", json={**body, "identity": "bob"}, headers=bearer)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json["session"]["id"] == first.json["session"]["id"]
    assert again.json["identity"] == "bob"  # a token of its own to join the same room
    other = client.post("/api/v1/sessions", json={**body, "greeting": "Yo"}, headers=bearer)
    assert other.status_code == 409 and other.json["error"]["code"] == "room_busy"
    assert len(calls.enqueued) == 1 and _count(settings) == 1


# --------------------------------------------------------------------------- shared counters


@pytest.fixture
def shared_store(valkey_url: str) -> Iterator[str]:
    url = valkey_url.rsplit("/", 1)[0] + "/9"
    r = redis.Redis.from_url(url)
    r.flushdb()
    yield url
    r.flushdb()
    r.close()


def test_session_quota_is_shared_by_processes(
    make_app: Callable[..., Flask], settings: Settings, calls: Calls, shared_store: str
) -> None:
    """Two apps (two gunicorn workers) on one store: the token's quota is counted once."""
    s = _with_web(settings, session_rate_limit="100 per minute;3 per day")
    one = make_app(s, ratelimit_storage_uri=shared_store).test_client()
    two = make_app(s, ratelimit_storage_uri=shared_store).test_client()
    headers = _token(settings)
    codes = [c.post("/api/v1/sessions", json={}, headers=headers).status_code
             for c in (one, two, one, two)]
    assert codes == [201, 201, 201, 429]
    res = two.post("/api/v1/sessions", json={}, headers=headers)
    assert res.json["error"]["code"] == "rate_limited" and "3 per 1 day" in res.json["error"]["message"]
    assert int(res.headers["Retry-After"]) > 0
    assert len(calls.enqueued) == 3 and _count(settings) == 3
    # another token has its own quota
    assert one.post("/api/v1/sessions", json={}, headers=_token(settings)).status_code == 201


def test_login_throttled_per_account_and_per_address_behind_a_proxy(
    make_app: Callable[..., Flask], settings: Settings, shared_store: str
) -> None:
    s = _with_web(settings, login_rate_limit="3 per minute", trusted_proxies=1)
    apps = [make_app(s, ratelimit_storage_uri=shared_store) for _ in range(2)]

    def attempt(app: Flask, addr: str, email: str, password: str = "wrong-wrong") -> int:
        client = app.test_client()
        client.environ_base["HTTP_X_FORWARDED_FOR"] = addr
        return AuthActions(client).login(email=email, password=password).status_code

    # one account guessed at from many addresses, through two processes
    codes = [attempt(apps[i % 2], f"203.0.113.{i}", "ops@example.com") for i in range(4)]
    assert codes == [401, 401, 401, 429]
    # one address trying many accounts
    codes = [attempt(apps[i % 2], "198.51.100.7", f"user{i}@example.com") for i in range(4)]
    assert codes == [401, 401, 401, 429]
    # a different client behind the same proxy is not locked out by that address
    assert attempt(apps[0], "198.51.100.8", "someone@example.com") == 401


def test_without_trusted_proxy_forwarded_for_is_ignored(
    make_app: Callable[..., Flask], settings: Settings, shared_store: str
) -> None:
    s = _with_web(settings, login_rate_limit="2 per minute")
    app = make_app(s, ratelimit_storage_uri=shared_store)
    codes = []
    for i in range(3):
        client = app.test_client()
        client.environ_base["HTTP_X_FORWARDED_FOR"] = f"192.0.2.{i}"  # spoofed: not trusted
        codes.append(AuthActions(client).login(email=f"u{i}@example.com",
                                               password=ADMIN_PASSWORD).status_code)
    assert codes == [401, 401, 429]


# --------------------------------------------------------------------------- cookies


def test_secure_cookies_and_hsts_outside_the_local_stack(
    make_app: Callable[..., Flask], settings: Settings
) -> None:
    local = make_app(settings)
    assert local.config["SESSION_COOKIE_SECURE"] is False
    assert "Strict-Transport-Security" not in local.test_client().get("/login").headers
    deployed = settings.model_copy(
        update={"web": settings.web.model_copy(update={"public_url": "https://avatar.example.com"})}
    )
    app = make_app(deployed)
    assert app.config["SESSION_COOKIE_SECURE"] is True
    res = app.test_client().get("/login", base_url="https://avatar.example.com")
    assert res.headers["Strict-Transport-Security"].startswith("max-age=")
    assert make_app(_with_web(deployed, secure_cookies=False)).config["SESSION_COOKIE_SECURE"] is False


# --------------------------------------------------------------------------- participant tokens


@pytest.mark.parametrize("text_chat", [False, True])
def test_participant_tokens_are_narrow(
    client: FlaskClient, bearer: dict[str, str], settings: Settings, text_chat: bool
) -> None:
    import jwt

    res = client.post("/api/v1/sessions", headers=bearer,
                      json={"room": f"narrow-{text_chat}", "identity": "carol", "text_chat": text_chat})
    assert res.status_code == 201, res.json
    claims = jwt.decode(res.json["token"], settings.livekit.api_secret.get_secret_value(),
                        algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == "carol"
    assert claims["exp"] - claims["nbf"] == settings.livekit.token_ttl_seconds
    video = {k: v for k, v in claims["video"].items() if v}
    expected = {"roomJoin": True, "room": f"narrow-{text_chat}", "canPublish": True,
                "canSubscribe": True}
    if text_chat:
        expected["canPublishData"] = True
    assert video == expected  # no roomAdmin/roomCreate/roomList/roomRecord/agent grants
    assert claims["video"].get("canPublishData") is text_chat


def test_concurrent_requests_for_one_room_start_one_agent(
    settings: Settings, calls: Calls, shared_store: str
) -> None:
    """Two web processes, one request each for the same room, the first still creating its
    session: the second is refused, not dispatched."""
    import threading

    from tasks.provisioning import get_or_create_session
    from web import create_app
    from web.backend import Backend

    inside, release = threading.Event(), threading.Event()

    def slow_create(*args: object, **kwargs: object) -> tuple[AgentSessionRecord, bool]:
        inside.set()
        assert release.wait(30)
        return get_or_create_session(*args, **kwargs)  # type: ignore[arg-type]

    backend = Backend(create_session=slow_create, enqueue_provision=calls.enqueue)
    one = create_app(settings, backend=backend, ratelimit_storage_uri=shared_store).test_client()
    two = create_app(settings, backend=Backend(enqueue_provision=calls.enqueue),
                     ratelimit_storage_uri=shared_store).test_client()
    headers = _token(settings)
    first: list[int] = []
    t = threading.Thread(target=lambda: first.append(
        one.post("/api/v1/sessions", json={"room": "race-room"}, headers=headers).status_code))
    t.start()
    try:
        assert inside.wait(30)
        res = two.post("/api/v1/sessions", json={"room": "race-room"}, headers=headers)
        assert res.status_code == 409 and res.json["error"]["code"] == "room_busy"
    finally:
        release.set()
        t.join(30)
    assert first == [201]
    again = two.post("/api/v1/sessions", json={"room": "race-room"}, headers=headers)
    assert again.status_code == 200  # the guard is released; the open session comes back
    assert len(calls.enqueued) == 1 and _count(settings) == 1
