"""The whole path from the browser: launch in the admin UI, the real back office provisions,
the live worker joins, and the join page talks to the agent with a fake microphone.

Needs the `stack` fixture (real livekit-server, Valkey, Celery worker and live worker from
tests/conftest.py) and runs inside `scripts/netns-run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from store.db import session_scope
from tests.conftest import Stack
from tests.waiting import wait_for
from web import create_app

from .browser import chromium, fake_media_args, serve
from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.browser]

QUESTION = "Hello, what is your name?"


def speech_wav(path: Path) -> Path:
    """Silence, one spoken question, then a long silence (Chromium loops the file)."""
    from cli.call import SAMPLE_RATE, synthesize, write_wav

    speech = synthesize(QUESTION)
    pad = np.zeros(int(SAMPLE_RATE * 1.5), np.int16)
    tail = np.zeros(int(SAMPLE_RATE * 25), np.int16)
    write_wav(path, np.concatenate([pad, speech, tail]), SAMPLE_RATE)
    return path


def _status(db_url: str, session_id: str, wanted: tuple[str, ...]) -> str | None:
    from store.models import AgentSessionRecord

    with session_scope(db_url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        return rec.status if rec is not None and rec.status in wanted else None


def _error(db_url: str, session_id: str) -> str | None:
    from store.models import AgentSessionRecord

    with session_scope(db_url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        return rec.error if rec else None


def test_launch_join_and_talk_from_the_browser(stack: Stack, artifacts_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = artifacts_dir / "web"
    shots.mkdir(parents=True, exist_ok=True)
    settings = stack.settings()
    settings = settings.model_copy(update={"web": settings.web.model_copy(update={
        "admin_email": ADMIN_EMAIL, "admin_password": SecretStr(ADMIN_PASSWORD)})})
    app = create_app(settings)  # the real back office: Celery on the stack's Valkey
    wav = speech_wav(tmp_path / "question.wav")
    with serve(app) as base_url, chromium(fake_media_args(wav)) as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{base_url}/login")
        page.fill("#email", ADMIN_EMAIL)
        page.fill("#password", ADMIN_PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base_url}/")

        page.goto(f"{base_url}/sessions/new")
        page.fill("#room", "browser-live")
        page.fill("#greeting", "Hello! I'm Ava. How can I help you today?")
        page.click("#launch-submit")
        page.wait_for_url(f"{base_url}/sessions/*")
        session_id = page.url.rsplit("/", 1)[-1]
        # provisioning by the real Celery worker, then the live worker joins
        status = wait_for(lambda: _status(settings.db.url, session_id, ("active", "failed", "ended")),
                          120, "the agent to join")
        assert status == "active", (
            f"session {status}: {_error(settings.db.url, session_id)}\n--- celery ---\n"
            + stack.log_text("celery")[-3000:] + "\n--- live ---\n" + stack.log_text("live")[-3000:]
        )
        expect(page.locator('[data-step="active"]')).to_have_class("step current", timeout=15_000)
        page.screenshot(path=shots / "12-live-progress.png", full_page=True)

        page.click("#join-link")
        expect(page.locator("body")).to_have_attribute("data-join-state", "connected", timeout=30_000)
        expect(page.locator("body")).to_have_attribute("data-video", "playing", timeout=90_000)
        video_size = page.evaluate(
            "() => { const v = document.querySelector('#stage video');"
            " return v ? [v.videoWidth, v.videoHeight] : null; }"
        )
        assert video_size and video_size[0] > 0 and video_size[1] > 0
        agent_caps = page.locator("#caption-log .msg.agent .bubble")
        # the greeting, then a reply to the spoken question
        expect(agent_caps.first).not_to_be_empty(timeout=60_000)
        expect(page.locator("#caption-log .msg.user")).not_to_have_count(0, timeout=90_000)
        # two complete agent segments (stream closed): the greeting and the reply
        page.wait_for_function(
            "() => document.querySelectorAll('#caption-log .msg.agent[data-done=\"true\"]').length >= 2",
            timeout=120_000,
        )
        reply = page.locator('#caption-log .msg.agent[data-done="true"] .bubble').last.text_content() or ""
        assert len(reply.split()) >= 2, reply
        page.screenshot(path=shots / "13-join-live.png", full_page=True)

        page.click("#leave")
        page.wait_for_url(f"{base_url}/sessions/{session_id}")
        expect(page.locator("#transcript .msg.agent")).not_to_have_count(0, timeout=30_000)
        page.screenshot(path=shots / "14-session-after-call.png", full_page=True)
        assert errors == []

    from store.models import AgentSessionRecord

    with session_scope(settings.db.url) as db:
        rec: Any = db.get(AgentSessionRecord, session_id)
        assert rec is not None and rec.source == "admin" and rec.dispatch_id
