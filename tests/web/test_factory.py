"""The app factory: configuration from settings, admin bootstrap, per-request DB sessions."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from pydantic import SecretStr
from sqlalchemy import func, select

from config.settings import Settings
from store.db import session_scope
from store.models import AdminUser
from web import create_app
from web.db import get_db

pytestmark = pytest.mark.unit


def test_config_comes_from_settings(settings: Settings) -> None:
    s = settings.model_copy(
        update={"web": settings.web.model_copy(update={"secure_cookies": True})}
    )
    app = create_app(s)
    assert app.config["SECRET_KEY"] == s.web.secret_key.get_secret_value()
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert create_app(settings).config["SESSION_COOKIE_SECURE"] is False


def test_session_cookie_flags(client, auth) -> None:  # type: ignore[no-untyped-def]
    res = auth.login()
    cookie = res.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie


def _admins(url: str) -> list[str]:
    with session_scope(url) as db:
        return list(db.scalars(select(AdminUser.email)))


def test_bootstrap_admin_once(settings: Settings) -> None:
    web = settings.web.model_copy(update={"admin_email": "Boot@Example.com",
                                          "admin_password": SecretStr("s3cret-password")})
    s = settings.model_copy(update={"web": web})
    create_app(s)
    create_app(s)
    assert _admins(s.db.url) == ["boot@example.com"]
    with session_scope(s.db.url) as db:
        stored = db.scalar(select(AdminUser.password_hash))
    assert stored and "s3cret-password" not in stored


def test_bootstrap_skipped_when_an_admin_exists(app: Flask, settings: Settings) -> None:
    web = settings.web.model_copy(update={"admin_email": "other@example.com",
                                          "admin_password": SecretStr("another-password")})
    create_app(settings.model_copy(update={"web": web}))
    assert _admins(settings.db.url) == ["ops@example.com"]


def test_bootstrap_on_unmigrated_db_does_not_crash(tmp_path, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    db = settings.db.model_copy(update={"url": f"sqlite:///{tmp_path / 'empty.db'}"})
    web = settings.web.model_copy(update={"admin_email": "a@example.com",
                                          "admin_password": SecretStr("password-123")})
    app = create_app(settings.model_copy(update={"db": db, "web": web}))
    assert app.test_client().get("/healthz").json == {"ok": True}


def test_db_session_closed_at_teardown(app: Flask) -> None:
    with app.app_context():
        db = get_db()
        assert db is get_db()
        assert db.scalar(select(func.count()).select_from(AdminUser)) == 1
        assert db.in_transaction()
    assert not db.in_transaction()


def test_unknown_page_is_404_html_and_api_404_is_json(client) -> None:  # type: ignore[no-untyped-def]
    res = client.get("/no/such/page")
    assert res.status_code == 404
    assert "text/html" in res.content_type
    res = client.get("/api/v1/nothing-here")
    assert res.status_code == 404
    assert res.json["error"]["code"] == "not_found"


def test_ratelimit_storage_is_configurable(make_app: Callable[..., Flask]) -> None:
    app = make_app(ratelimit_storage_uri="memory://")
    assert app.test_client().get("/login").status_code == 200


def test_security_headers(client, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    res = client.get("/login")
    csp = res.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert settings.livekit.browser_url in csp
    assert res.headers["X-Frame-Options"] == "DENY"
    assert res.headers["X-Content-Type-Options"] == "nosniff"
    assert res.headers["Cache-Control"] == "no-store"
