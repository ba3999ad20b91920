"""The admin UI in headless Chromium against a real HTTP server.

Run inside `scripts/netns-run` (the join test needs the LiveKit server there). Screenshots of
every page go to test-artifacts/web/.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, TranscriptLine, utcnow

from .browser import chromium, fake_media_args, serve, tone_wav
from .conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Calls

pytestmark = pytest.mark.browser

XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
TIMEOUT_MS = 15_000


@pytest.fixture
def shots(artifacts_dir: Path) -> Path:
    out = artifacts_dir / "web"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def base_url(app: Flask) -> Iterator[str]:
    with serve(app) as url:
        yield url


def _login(page: Any, base_url: str) -> None:
    page.goto(f"{base_url}/login")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def _set_status(settings: Settings, session_id: str, status: str, **values: Any) -> None:
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        assert rec is not None
        rec.status = status
        for k, v in values.items():
            setattr(rec, k, v)


def test_operator_walkthrough(
    base_url: str, seeded: dict[str, str], settings: Settings, calls: Calls, shots: Path
) -> None:
    from playwright.sync_api import expect

    with chromium() as browser:
        ctx = browser.new_context(viewport={"width": 1440, "height": 960}, accept_downloads=True)
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(f"{base_url}/")
        expect(page).to_have_url(f"{base_url}/login?next=/")
        page.screenshot(path=shots / "01-login.png")
        page.fill("#email", ADMIN_EMAIL)
        page.fill("#password", "wrong password")
        page.click("button[type=submit]")
        expect(page.locator(".flash.error")).to_have_text("Invalid email or password.")
        _login(page, base_url)

        # dashboard
        expect(page.locator('[data-stat="active"] .v')).to_have_text("1")
        expect(page.locator("svg.chart")).to_have_count(2)
        page.screenshot(path=shots / "02-dashboard.png", full_page=True)

        # sessions list, filter, paging
        page.click('a[data-nav="sessions"]')
        expect(page.locator("tr[data-session]")).to_have_count(20)
        page.screenshot(path=shots / "03-sessions.png", full_page=True)
        page.select_option("#f-status", "failed")
        page.click(".filters button[type=submit]")
        expect(page.locator("tr[data-session]")).to_have_count(1)
        expect(page.locator("tr[data-session] .pill")).to_have_text("failed")

        # launch: a validation error first, then a real launch
        page.click('a[data-nav="launch"]')
        page.fill("#room", "not valid!")
        page.click("#launch-submit")
        expect(page.locator('[data-field="room"] .msg')).to_contain_text("Use letters, digits")
        page.screenshot(path=shots / "04-launch-error.png", full_page=True)
        page.fill("#room", "browser-demo")
        page.fill("#greeting", "Welcome to the browser demo!")
        page.select_option("#avatar_provider", "local")
        page.screenshot(path=shots / "04-launch.png", full_page=True)
        page.click("#launch-submit")
        page.wait_for_url(f"{base_url}/sessions/*")
        session_id = page.url.rsplit("/", 1)[-1]
        assert calls.enqueued == [(session_id, "pending")]
        expect(page.locator('[data-step="pending"]')).to_have_class("step current")
        page.screenshot(path=shots / "05-progress-pending.png", full_page=True)

        # the back office moves the session along; the page follows by polling
        _set_status(settings, session_id, SessionStatus.PROVISIONING, provisioned_at=utcnow())
        expect(page.locator('[data-step="provisioning"]')).to_have_class("step current", timeout=TIMEOUT_MS)
        _set_status(settings, session_id, SessionStatus.DISPATCHED, dispatch_id="AD_1")
        expect(page.locator('[data-step="dispatched"]')).to_have_class("step current", timeout=TIMEOUT_MS)
        _set_status(settings, session_id, SessionStatus.ACTIVE, started_at=utcnow())
        expect(page.locator("#status-pill .pill")).to_have_text("active", timeout=TIMEOUT_MS)
        expect(page.locator('[data-step="active"]')).to_have_class("step current")

        # transcript lines appear live, malicious text stays text
        with session_scope(settings.db.url) as db:
            db.add(TranscriptLine(session_id=session_id, item_id="i1", speaker="agent",
                                  text="Welcome to the browser demo!"))
            db.add(TranscriptLine(session_id=session_id, item_id="i2", speaker="user", text=XSS))
        expect(page.locator("#transcript .msg")).to_have_count(2, timeout=TIMEOUT_MS)
        expect(page.locator("#transcript .msg.user .bubble")).to_have_text(XSS)
        assert page.evaluate("window.__xss") is None
        page.screenshot(path=shots / "06-session-live.png", full_page=True)

        # the session ends: the page reloads itself without the live parts
        _set_status(settings, session_id, SessionStatus.ENDED, ended_at=utcnow(), end_reason="caller_left")
        expect(page.locator("#status-pill .pill")).to_have_text("ended", timeout=TIMEOUT_MS)
        expect(page.locator("#end-form")).to_have_count(0, timeout=TIMEOUT_MS)
        assert page.evaluate("window.__xss") is None

        # a finished session with summary, costs, latency chart and exports
        page.goto(f"{base_url}/sessions/{seeded['ended']}")
        expect(page.locator("text=The caller asked about opening hours.")).to_be_visible()
        with page.expect_download() as dl:
            page.click("text=VTT")
        assert dl.value.suggested_filename == f"transcript-{seeded['ended']}.vtt"
        page.screenshot(path=shots / "07-session-detail.png", full_page=True)

        # usage and its CSV
        page.click('a[data-nav="usage"]')
        expect(page.locator("svg.chart")).to_have_count(2)
        page.screenshot(path=shots / "08-usage.png", full_page=True)
        with page.expect_download() as dl:
            page.click("#csv-link")
        csv_text = Path(dl.value.path()).read_text()
        assert csv_text.startswith("day,provider,metric,quantity,cost,sessions")

        # settings: secrets masked
        page.click('a[data-nav="settings"]')
        expect(page.locator('[data-group="livekit"]')).to_be_visible()
        assert settings.livekit.api_secret.get_secret_value() not in page.content()
        page.screenshot(path=shots / "09-settings.png", full_page=True)

        # unknown ids
        page.goto(f"{base_url}/sessions/does-not-exist")
        expect(page.locator(".error-page .code")).to_have_text("404")
        page.screenshot(path=shots / "10-not-found.png")

        # sign out
        page.click("text=Sign out")
        expect(page).to_have_url(f"{base_url}/login")
        assert errors == []
        ctx.close()


def test_join_page_connects_with_microphone(
    livekit_server: Any, make_app: Any, settings: Settings, seeded: dict[str, str],
    shots: Path, tmp_path: Path,
) -> None:
    """The bundled livekit-client joins a real LiveKit server and publishes the fake mic."""
    from playwright.sync_api import expect

    from store.db import session_scope as scope
    from web.auth import create_admin

    assert livekit_server.api_key == settings.livekit.api_key.get_secret_value()
    s = settings.model_copy(
        update={"livekit": settings.livekit.model_copy(update={"url": livekit_server.url})}
    )
    with scope(s.db.url) as db:
        create_admin(db, ADMIN_EMAIL, ADMIN_PASSWORD)
    wav = tone_wav(tmp_path / "tone.wav")
    with serve(make_app(s)) as base_url, chromium(fake_media_args(wav)) as browser:
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        _login(page, base_url)
        page.goto(f"{base_url}/sessions/{seeded['active']}/join")
        expect(page.locator("body")).to_have_attribute("data-join-state", "connected", timeout=TIMEOUT_MS)
        expect(page.locator("#mic-state")).to_have_text("on", timeout=TIMEOUT_MS)
        published = page.evaluate(
            "() => [...window.__room.localParticipant.trackPublications.values()].map(p => p.kind)"
        )
        assert "audio" in published
        page.screenshot(path=shots / "11-join-waiting.png", full_page=True)
        page.click("#mute")
        expect(page.locator("#mic-state")).to_have_text("muted")
        page.click("#leave")
        page.wait_for_url(f"{base_url}/sessions/{seeded['active']}")
        assert errors == []
        ctx.close()
