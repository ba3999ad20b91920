"""The settings page shows no password, not even inside URLs (issue #12, item 5)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from flask import Flask

import config.logging as config_logging
from config.settings import Settings
from store.db import session_scope
from web.auth import create_admin

from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD, AuthActions

pytestmark = pytest.mark.unit

REDIS_PASSWORD = "redis-pass-77Zx"
LLM_PASSWORD = "llm-pass-Ppp3"


def test_settings_page_shows_no_password(
    make_app: Callable[..., Flask], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.Logger, "makeRecord", logging.Logger.makeRecord)
    monkeypatch.setattr(config_logging, "_mask", None)
    s = settings.model_copy(update={
        "broker": settings.broker.model_copy(
            update={"url": f"redis://:{REDIS_PASSWORD}@cache.internal:6379/0"}),
        "livekit": settings.livekit.model_copy(
            update={"public_url": f"wss://u:{LLM_PASSWORD}@lk.example.com"}),
    })
    with session_scope(settings.db.url) as db:
        create_admin(db, ADMIN_EMAIL, ADMIN_PASSWORD)
    client = make_app(s, ratelimit_storage_uri="memory://").test_client()
    assert AuthActions(client).login().status_code == 302
    page = client.get("/settings").get_data(as_text=True)
    assert "cache.internal" in page and "redis://:***@" in page
    assert REDIS_PASSWORD not in page and LLM_PASSWORD not in page
