"""Login, logout, admin creation, CSRF and login rate limiting."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from config.settings import Settings
from store.db import session_scope
from store.models import AdminUser, ApiToken
from web.auth import AuthError, create_admin, create_api_token, verify_api_token

from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD, AuthActions

pytestmark = pytest.mark.unit

PAGES = ["/", "/sessions", "/sessions/new", "/usage", "/usage.csv", "/settings"]


@pytest.mark.parametrize("path", PAGES)
def test_pages_require_login(client: FlaskClient, path: str) -> None:
    res = client.get(path)
    assert res.status_code == 302
    assert res.location.startswith("/login?next=")


def test_login_and_logout(client: FlaskClient, auth: AuthActions) -> None:
    res = auth.login()
    assert res.status_code == 302 and res.location == "/"
    assert client.get("/").status_code == 200
    assert auth.logout().status_code == 302
    assert client.get("/").status_code == 302


def test_login_is_case_insensitive_on_email(auth: AuthActions) -> None:
    assert auth.login(email=ADMIN_EMAIL.upper()).status_code == 302


@pytest.mark.parametrize(
    ("email", "password"),
    [(ADMIN_EMAIL, "wrong-password"), ("nobody@example.com", ADMIN_PASSWORD), ("", "")],
)
def test_bad_credentials(client: FlaskClient, auth: AuthActions, email: str, password: str) -> None:
    res = auth.login(email=email, password=password)
    assert res.status_code == 401
    assert "Invalid email or password." in res.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_login_redirects_to_next_but_never_off_site(client: FlaskClient, auth: AuthActions) -> None:
    token = auth.csrf()
    data = {"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD, "csrf_token": token}
    res = client.post("/login?next=/usage", data=data)
    assert res.location == "/usage"
    for evil in ("//evil.example/x", "https://evil.example/", "javascript:alert(1)"):
        res = client.post("/login", query_string={"next": evil}, data={**data, "csrf_token": auth.csrf()})
        assert res.location == "/", evil


def test_login_without_csrf_token_is_rejected(client: FlaskClient) -> None:
    res = client.post("/login", data={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD})
    assert res.status_code == 400
    assert client.get("/").status_code == 302


def test_forms_need_csrf_when_logged_in(logged_in: FlaskClient, calls) -> None:  # type: ignore[no-untyped-def]
    res = logged_in.post("/sessions/new", data={"instructions": "x", "language": "en"})
    assert res.status_code == 400
    assert "Form expired" in res.get_data(as_text=True)
    assert calls.enqueued == []
    assert logged_in.post("/logout").status_code == 400


def test_login_rate_limited(make_app: Callable[..., Flask], settings: Settings) -> None:
    web = settings.web.model_copy(update={"login_rate_limit": "3 per minute"})
    app = make_app(settings.model_copy(update={"web": web}))
    client = app.test_client()
    auth = AuthActions(client)
    codes = [auth.login(password="nope-nope-nope").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    res = auth.login()  # even the right password waits for the window
    assert res.status_code == 429
    assert "Too many sign-in attempts" in res.get_data(as_text=True)
    assert client.get("/login").status_code == 200  # GET is not limited


def test_create_admin_validates_and_hashes(settings: Settings) -> None:
    with session_scope(settings.db.url) as db:
        user = create_admin(db, " New@Example.com ", "long-enough-pw")
        assert user.email == "new@example.com"
        assert user.password_hash != "long-enough-pw"
        assert user.password_hash.startswith(("scrypt:", "pbkdf2:"))
        with pytest.raises(AuthError, match="already exists"):
            create_admin(db, "new@example.com", "long-enough-pw")
        with pytest.raises(AuthError, match="at least 8"):
            create_admin(db, "short@example.com", "short")
        with pytest.raises(AuthError, match="valid email"):
            create_admin(db, "not-an-email", "long-enough-pw")


def test_api_tokens_are_stored_hashed(settings: Settings) -> None:
    with session_scope(settings.db.url) as db:
        token = create_api_token(db, "ci")
    with session_scope(settings.db.url) as db:
        row = db.scalar(select(ApiToken))
        assert row is not None and row.name == "ci"
        assert token not in (row.token_hash, row.prefix) and token.startswith(row.prefix)
        assert verify_api_token(db, token) is not None
        assert verify_api_token(db, token + "x") is None
        row.revoked = True
        db.flush()
        assert verify_api_token(db, token) is None
    with session_scope(settings.db.url) as db, pytest.raises(AuthError):
        create_api_token(db, "  ")
    with session_scope(settings.db.url) as db:
        assert db.scalar(select(AdminUser)) is None
