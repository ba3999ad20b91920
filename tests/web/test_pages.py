"""Admin pages: content, filters and paging, launch form, escaping, exports, CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus

from .conftest import Calls, add_costs, add_session, add_summary_and_report

pytestmark = pytest.mark.unit

XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'


def _text(res) -> str:  # type: ignore[no-untyped-def]
    return res.get_data(as_text=True)


def test_dashboard(logged_in: FlaskClient, seeded: dict[str, str]) -> None:
    res = logged_in.get("/")
    html = _text(res)
    assert res.status_code == 200
    active = re.search(r'data-stat="active">.*?<div class="v">(\d+)</div>', html, re.S)
    assert active and active.group(1) == "1"
    today = re.search(r'data-stat="today">.*?<div class="v">(\d+)</div>', html, re.S)
    start = datetime.combine(datetime.now(UTC).date(), datetime.min.time(), tzinfo=UTC)
    with session_scope_for(logged_in) as db:
        created = db.scalars(select(AgentSessionRecord.created_at)).all()
    expected = sum(1 for c in created if c.replace(tzinfo=UTC) >= start)
    assert today and int(today.group(1)) == expected >= 1
    assert html.count('<rect class="bar"') == 28  # two 14-day charts
    assert "support-demo" in html and "LLM first token" in html


def test_dashboard_empty(logged_in: FlaskClient) -> None:
    html = _text(logged_in.get("/"))
    assert "No sessions yet" in html and "no data" in html


def test_sessions_filters_and_paging(logged_in: FlaskClient, seeded: dict[str, str]) -> None:
    html = _text(logged_in.get("/sessions"))
    total = int(re.search(r"<p>(\d+) sessions", html).group(1))  # type: ignore[union-attr]
    assert total > 20
    assert html.count("data-session=") == 20
    assert 'rel="next"' in html
    page2 = _text(logged_in.get("/sessions?page=2"))
    assert page2.count("data-session=") == total - 20
    assert 'rel="prev"' in page2 and 'rel="next"' not in page2

    failed = _text(logged_in.get("/sessions?status=failed"))
    assert failed.count("data-session=") == 1 and "lobby" in failed
    room = _text(logged_in.get("/sessions?room=support"))
    assert room.count("data-session=") == 1 and seeded["ended"] in room
    prov = _text(logged_in.get("/sessions?provider=assemblyai"))
    with session_scope_for(logged_in) as db:
        n = db.scalar(select(func.count()).select_from(AgentSessionRecord)
                      .where(AgentSessionRecord.stt_provider == "assemblyai"))
    assert prov.count("data-session=") == min(20, n)
    today = datetime.now(UTC).date()
    since = _text(logged_in.get(f"/sessions?from={today - timedelta(days=1)}&to={today}"))
    assert "room-1-0" in since and "room-5-0" not in since
    # bad filter values are ignored, not errors
    assert logged_in.get("/sessions?status=bogus&from=notadate&page=-3").status_code == 200
    assert "No sessions found" in _text(logged_in.get("/sessions?room=zzz-nothing"))
    # paging keeps the filters
    assert "status=ended" in _text(logged_in.get("/sessions?status=ended"))


def session_scope_for(client: FlaskClient):  # type: ignore[no-untyped-def]
    settings = client.application.extensions["settings"]
    return session_scope(settings.db.url)


def _launch_data(client: FlaskClient, **overrides: str) -> dict[str, str]:
    html = _text(client.get("/sessions/new"))
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    key = re.search(r'name="request_key" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
    data = {
        "csrf_token": token, "request_key": key, "room": "", "instructions": "You are Ava.",
        "greeting": "Hello!", "language": "en", "stt_provider": "local", "llm_provider": "local",
        "llm_model": "", "tts_provider": "local", "tts_voice": "", "avatar_provider": "local",
        "avatar_id": "",
    }
    data.update(overrides)
    return data


def test_launch_creates_enqueues_and_redirects(logged_in: FlaskClient, calls: Calls, settings: Settings) -> None:
    data = _launch_data(logged_in, room="launch-room", llm_provider="openai", llm_model="gpt-4o-mini")
    res = logged_in.post("/sessions/new", data=data)
    assert res.status_code == 302
    sid = res.location.rsplit("/", 1)[-1]
    assert calls.enqueued == [(sid, "pending")]
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        assert (rec.room, rec.source, rec.llm_provider) == ("launch-room", "admin", "openai")
        assert rec.spec["llm"]["model"] == "gpt-4o-mini"
    # submitting the same form twice does not provision twice
    again = logged_in.post("/sessions/new", data=data)
    assert again.location == res.location
    assert len(calls.enqueued) == 1
    page = _text(logged_in.get(res.location))
    assert "launch-room" in page and 'data-step="pending"' in page
    assert 'class="step current" data-step="pending"' in page
    status = logged_in.get(f"/sessions/{sid}/status.json").json
    assert status["session"]["status"] == "pending"
    assert [s["state"] for s in status["progress"]][:2] == ["current", "todo"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("room", "no spaces please", "Use letters, digits"),
        ("instructions", "", "This field is required."),
        ("language", "english!", "language code"),
        ("tts_provider", "acme", "Choose one of the listed options."),
        ("greeting", "x" * 501, "at most 500"),
    ],
)
def test_launch_validation(
    logged_in: FlaskClient, calls: Calls, settings: Settings, field: str, value: str, message: str
) -> None:
    res = logged_in.post("/sessions/new", data=_launch_data(logged_in, **{field: value}))
    assert res.status_code == 422
    html = _text(res)
    block = re.search(rf'data-field="{field}">(.*?)</div>\s*</div>', html, re.S)
    assert block and message in block.group(1), html
    assert "highlighted field" in html
    assert calls.enqueued == []
    with session_scope(settings.db.url) as db:
        assert db.scalar(select(func.count()).select_from(AgentSessionRecord)) == 0


def test_launch_with_a_knowledge_file(logged_in: FlaskClient, calls: Calls, settings: Settings) -> None:
    data = _launch_data(logged_in, knowledge="We close at 6 pm.")
    data["knowledge_file"] = (io.BytesIO(b"A croissant costs 2 dollars 80.\n"), "prices.md")
    res = logged_in.post("/sessions/new", data=data, content_type="multipart/form-data")
    assert res.status_code == 302
    sid = res.location.rsplit("/", 1)[-1]
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        assert rec.spec["knowledge"] == "We close at 6 pm.\n\nA croissant costs 2 dollars 80."


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        (b"x" * 80_001, "big.txt", "too large: at most 20,000 characters"),
        ("é".encode() * 20_001, "big.md", "too large"),
        (b"\xff\xfe\x00bad", "notes.txt", "not UTF-8 text"),
        (b"%PDF-1.7", "notes.pdf", "plain text file"),
    ],
)
def test_a_knowledge_file_that_cannot_be_used_is_refused(
    logged_in: FlaskClient, calls: Calls, content: bytes, name: str, message: str
) -> None:
    data = _launch_data(logged_in)
    data["knowledge_file"] = (io.BytesIO(content), name)
    res = logged_in.post("/sessions/new", data=data, content_type="multipart/form-data")
    assert res.status_code == 422
    block = re.search(r'data-field="knowledge_file">(.*?)</div>\s*</div>', _text(res), re.S)
    assert block and message in block.group(1)
    assert calls.enqueued == []


def test_launch_form_prefills_defaults(logged_in: FlaskClient) -> None:
    html = _text(logged_in.get("/sessions/new?room=from-link"))
    assert 'value="from-link"' in html
    assert '<option value="local" selected>' in html


def test_session_detail(logged_in: FlaskClient, seeded: dict[str, str]) -> None:
    html = _text(logged_in.get(f"/sessions/{seeded['ended']}"))
    assert "support-demo" in html
    assert "open on Saturdays" in html
    assert "The caller asked about opening hours." in html and "Send the brochure" in html
    for fmt in ("JSON", "VTT", "SRT", "MD"):
        assert f">{fmt}</a>" in html
    assert "tavus" in html and "final" in html
    assert html.count('<rect class="bar"') >= 6  # per-turn latency chart
    assert "End session" not in html  # already ended
    live = _text(logged_in.get(f"/sessions/{seeded['active']}"))
    assert "End session" in live and "updating live" in live and "estimate" in live


def test_transcript_json_polling(logged_in: FlaskClient, seeded: dict[str, str]) -> None:
    data = logged_in.get(f"/sessions/{seeded['active']}/transcript.json").json
    assert data["is_open"] is True and len(data["lines"]) == 2
    last = data["lines"][-1]["id"]
    assert logged_in.get(f"/sessions/{seeded['active']}/transcript.json?after={last}").json["lines"] == []


@pytest.mark.parametrize(
    "path",
    ["/sessions/nope", "/sessions/nope/status.json", "/sessions/nope/transcript.json",
     "/sessions/nope/join", "/sessions/nope/export.vtt", "/sessions/" + "x" * 300],
)
def test_unknown_session_404(logged_in: FlaskClient, path: str) -> None:
    assert logged_in.get(path).status_code == 404


def test_exports(logged_in: FlaskClient, seeded: dict[str, str]) -> None:
    sid = seeded["ended"]
    res = logged_in.get(f"/sessions/{sid}/export.vtt")
    assert res.status_code == 200 and res.mimetype == "text/vtt"
    assert _text(res).startswith("WEBVTT")
    assert f'filename="transcript-{sid}.vtt"' in res.headers["Content-Disposition"]
    assert logged_in.get(f"/sessions/{sid}/export.srt").mimetype == "application/x-subrip"
    assert _text(logged_in.get(f"/sessions/{sid}/export.md")).startswith("# Transcript")
    assert logged_in.get(f"/sessions/{sid}/export.json").mimetype == "application/json"
    assert logged_in.get(f"/sessions/{sid}/export.exe").status_code == 404
    assert logged_in.get(f"/sessions/{seeded['active']}/export.vtt").status_code == 404  # no report yet


def test_malicious_transcript_is_escaped(logged_in: FlaskClient, settings: Settings) -> None:
    sid = add_session(settings.db.url, room="xss", status=SessionStatus.ENDED,
                      lines=[("user", XSS), ("agent", "ok")])
    add_summary_and_report(settings.db.url, sid, text=XSS)
    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        rec.spec = {**rec.spec, "instructions": XSS, "greeting": XSS}
        rec.error = XSS
    html = _text(logged_in.get(f"/sessions/{sid}"))
    assert "<script>window.__xss" not in html
    assert "<img src=x" not in html
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html
    data = logged_in.get(f"/sessions/{sid}/transcript.json")
    assert data.mimetype == "application/json"
    assert data.json["lines"][0]["text"] == XSS  # raw in JSON; the page script uses textContent


def test_end_button(logged_in: FlaskClient, seeded: dict[str, str], calls: Calls) -> None:
    sid = seeded["active"]
    token = re.search(r'name="csrf_token" value="([^"]+)"',  # type: ignore[union-attr]
                      _text(logged_in.get(f"/sessions/{sid}"))).group(1)
    res = logged_in.post(f"/sessions/{sid}/end", data={"csrf_token": token}, follow_redirects=True)
    assert "Closing the room" in _text(res)
    assert calls.ended == [sid]
    res = logged_in.post(f"/sessions/{seeded['ended']}/end", data={"csrf_token": token}, follow_redirects=True)
    assert "already ended" in _text(res)
    assert calls.ended == [sid]


def test_join_page(logged_in: FlaskClient, seeded: dict[str, str], settings: Settings) -> None:
    html = _text(logged_in.get(f"/sessions/{seeded['active']}/join"))
    assert 'id="join-config"' in html and "join.bundle.js" in html
    assert f'data-url="{settings.livekit.browser_url}"' in html
    assert re.search(r'data-token="ey[^"]+"', html)
    closed = _text(logged_in.get(f"/sessions/{seeded['ended']}/join"))
    assert "join.bundle.js" not in closed and "Only a running session can be joined" in closed


def test_usage_page_and_csv(logged_in: FlaskClient, seeded: dict[str, str]) -> None:
    html = _text(logged_in.get("/usage"))
    assert "tavus" in html and "Download CSV" in html
    res = logged_in.get("/usage.csv")
    assert res.mimetype == "text/csv"
    assert "attachment;" in res.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(_text(res))))
    assert rows and set(rows[0]) == {"day", "provider", "metric", "quantity", "cost", "sessions"}
    total = sum(float(r["cost"]) for r in rows)
    with session_scope_for(logged_in) as db:
        from store.models import SessionCost

        expected = db.scalar(select(func.sum(SessionCost.cost)))
    assert total == pytest.approx(expected, rel=1e-4)
    assert {"tavus", "local", "assemblyai", "openai", "livekit"} <= {r["provider"] for r in rows}
    # a narrower range has fewer rows; swapped dates still work
    today = datetime.now(UTC).date()
    narrow = list(csv.DictReader(io.StringIO(_text(logged_in.get(f"/usage.csv?from={today}&to={today}")))))
    assert len(narrow) < len(rows)
    swapped = logged_in.get(f"/usage.csv?from={today}&to={today - timedelta(days=3)}")
    assert swapped.status_code == 200


def test_csv_cells_cannot_be_formulas(logged_in: FlaskClient, settings: Settings) -> None:
    sid = add_session(settings.db.url, room="f", status=SessionStatus.ENDED)
    add_costs(settings.db.url, sid, datetime.now(UTC).date(), {("=HYPERLINK(1)", "m"): (1, 1)})
    text = _text(logged_in.get("/usage.csv"))
    assert "'=HYPERLINK(1)" in text


def test_settings_page_masks_secrets(logged_in: FlaskClient, settings: Settings) -> None:
    html = _text(logged_in.get("/settings"))
    assert settings.livekit.api_secret.get_secret_value() not in html
    assert settings.web.secret_key.get_secret_value() not in html
    assert "LIVEKIT__API_SECRET" in html and "••••••••" in html
    assert f":{settings.web.flower_port}/" in html
    assert settings.livekit.browser_url in html
