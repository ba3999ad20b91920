"""A lost agent's session: the webhook asks for a resume once, a job claims the session once.

The whole path against the real cluster is tests/e2e/test_resume.py; these check the
decisions on the real store and broker.
"""

from __future__ import annotations

import base64
import json

import pytest
import redis
from livekit import api

from config.settings import Settings
from store.db import session_scope
from store.models import AgentSessionRecord
from store.resume import (
    RESUME_KEY,
    SESSION_ATTR,
    WORKER_ATTR,
    claim_session,
    holds_session,
    plus_baseline,
    resume_metadata,
    split_resume,
)
from tasks.app import AvatarCelery
from tests.tasks.helpers import get_session, new_session, room_event
from tests.tasks.test_webhooks import deliver, queued, queued_tasks, wh_app, wh_settings  # noqa: F401

pytestmark = pytest.mark.unit


def _agent_left(room: str, session_id: str, worker_id: str) -> api.WebhookEvent:
    ev = room_event("participant_left", room, identity="agent-AJ_1", agent=True)
    ev.participant.attributes[SESSION_ATTR] = session_id
    ev.participant.attributes[WORKER_ATTR] = worker_id
    return ev


def test_agent_leaving_an_open_session_asks_for_one_resume(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis  # noqa: F811
) -> None:
    sid = new_session(wh_settings, room="r1", status="active", worker_id="live-a:10:AJ_1")
    out = deliver(wh_settings, wh_app, _agent_left("r1", sid, "live-a:10:AJ_1"))
    assert out["action"] == "resume_requested"
    # a job that no longer holds the session (resumed already) asks for nothing
    again = deliver(wh_settings, wh_app, _agent_left("r1", sid, "live-b:11:AJ_0"))
    assert again["action"] == "ignored"
    assert queued_tasks(queued, "live") == [
        ("tasks.resume.resume_session", [sid, "live-a:10:AJ_1"])]


def test_agent_leaving_an_ended_session_asks_for_nothing(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis  # noqa: F811
) -> None:
    sid = new_session(wh_settings, room="r2", status="ended", worker_id="live-a:10:AJ_1")
    out = deliver(wh_settings, wh_app, _agent_left("r2", sid, "live-a:10:AJ_1"))
    assert out["action"] == "ignored"
    caller = deliver(wh_settings, wh_app, room_event("participant_left", "r2", identity="bob"))
    assert caller["action"] == "ignored"
    assert queued_tasks(queued, "live") == []


def test_one_job_per_session(settings: Settings) -> None:
    sid = new_session(settings, room="r3", status="dispatched")
    url = settings.db.url
    assert claim_session(url, sid, "live-a:1:AJ_1", None)
    assert claim_session(url, sid, "live-a:1:AJ_1", None)  # the same job again
    assert not claim_session(url, sid, "live-b:2:AJ_2", None)  # a repeated dispatch
    # the back office marks the loss; only a resume naming that marker takes it
    with session_scope(url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        rec.worker_id = "resume:abc"
    assert not claim_session(url, sid, "live-b:2:AJ_2", None)
    assert not claim_session(url, sid, "live-b:2:AJ_2", "resume:other")
    assert claim_session(url, sid, "live-b:2:AJ_3", "resume:abc")
    assert not claim_session(url, sid, "live-a:4:AJ_4", "resume:abc")  # taken once
    assert get_session(settings, sid).worker_id == "live-b:2:AJ_3"
    # the job cut off from the room no longer holds it, so it does not end it
    assert holds_session(url, sid, "live-b:2:AJ_3") and not holds_session(url, sid, "live-a:1:AJ_1")
    with session_scope(url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        rec.status = "ended"
    assert not claim_session(url, sid, "live-b:2:AJ_3", None)  # never reopens


def test_resume_metadata_round_trip_and_usage_baseline() -> None:
    raw = resume_metadata('{"session_id": "s1", "greeting": "hi"}', "resume:abc")
    spec, marker = split_resume(raw)
    assert marker == "resume:abc" and RESUME_KEY not in spec
    assert split_resume('{"session_id": "s1"}') == ('{"session_id": "s1"}', None)
    base = {("local", "tts_characters"): 35.0, ("local", "stt_audio_seconds"): 4.0}
    assert plus_baseline({("local", "tts_characters"): 53.0}, base) == {
        ("local", "tts_characters"): 88.0, ("local", "stt_audio_seconds"): 4.0}
    assert plus_baseline({("local", "x"): 1.0}, None) == {("local", "x"): 1.0}


def test_dispatch_check_leaves_a_session_a_job_holds(settings: Settings) -> None:
    """Only a session no job holds is dispatched again (checked before LiveKit is asked)."""
    from tasks.resume import check_dispatch

    held = new_session(settings, room="r4", status="dispatched", worker_id="live-a:1:AJ_1")
    active = new_session(settings, room="r5", status="active", worker_id="live-a:1:AJ_2")
    ended = new_session(settings, room="r6", status="ended")
    assert check_dispatch(settings, held) == "taken"
    assert check_dispatch(settings, active) == "taken"
    assert check_dispatch(settings, active, marker="resume:abc") == "taken"
    assert check_dispatch(settings, ended) == "taken"


def test_a_lost_room_is_dispatched_again_once_without_asking_its_dead_node(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job reports its room lost (its node died): LiveKit cannot say who is in the room,
    so the resume does not ask; it repeats short dispatch attempts until the room is
    routable again, and takes the session from the lost job once."""
    import asyncio

    import tasks.resume as resume_mod

    async def no_room_state(*_: object) -> tuple[int, int, int]:
        raise AssertionError("the dead node's room is not asked")

    attempts: list[str] = []

    async def dispatch(_settings: Settings, room: str, metadata: str) -> str:
        attempts.append(metadata)
        if len(attempts) < 3:  # still routed to the dead node: LiveKit holds the request
            await asyncio.sleep(10)
        return "AD_1"

    monkeypatch.setattr(resume_mod, "_room_state", no_room_state)
    monkeypatch.setattr(resume_mod, "_dispatch", dispatch)
    monkeypatch.setattr(resume_mod, "ATTEMPT_SECONDS", 0.05)
    sid = new_session(settings, room="r7", status="active", worker_id="live-a:1:AJ_1")
    out = resume_mod.resume(settings, sid, "live-a:1:AJ_1", room_lost=True)
    assert out["action"] == "dispatched" and out["dispatch_id"] == "AD_1"
    assert len(attempts) == 3
    marker = get_session(settings, sid).worker_id
    assert marker and marker.startswith("resume:")
    assert split_resume(attempts[-1])[1] == marker
    # a repeated report of the same loss finds the session no longer held by that job
    assert resume_mod.resume(settings, sid, "live-a:1:AJ_1", room_lost=True)["action"] == "not_held"
    assert len(attempts) == 3


def test_a_session_whose_room_keeps_being_lost_is_given_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from datetime import UTC, datetime

    import tasks.resume as resume_mod
    from store.models import TranscriptLine
    from store.resume import RESUME_LINE

    async def dispatch(*_: object) -> str:
        raise AssertionError("not dispatched again")

    monkeypatch.setattr(resume_mod, "_dispatch", dispatch)
    sid = new_session(settings, room="r8", status="active", worker_id="live-a:1:AJ_9")
    with session_scope(settings.db.url) as db:
        for i in range(resume_mod.MAX_RESUMES):
            db.add(TranscriptLine(session_id=sid, item_id=f"it{i}", speaker="agent",
                                  text=RESUME_LINE, started_at=datetime.now(UTC)))
    out = resume_mod.resume(settings, sid, "live-a:1:AJ_9", room_lost=True)
    assert out["action"] == "gave_up"
    assert get_session(settings, sid).worker_id == "live-a:1:AJ_9"


def test_a_room_created_again_under_an_active_session_gets_its_holder_looked_at(
    wh_settings: Settings, wh_app: AvatarCelery, queued: redis.Redis  # noqa: F811
) -> None:
    """A node and the job's worker died together: the caller's SDK comes back into a new room
    of the same name (new sid). The session follows the new room (no second session, though
    the name matches the rooms rule) and its holder is looked at once its heartbeat would be
    stale; a resume already on its way is left alone."""
    from datetime import UTC, datetime, timedelta

    from tasks.resume import HOLDER_SILENT_SECONDS

    beat = datetime.now(UTC) - timedelta(seconds=3)
    sid = new_session(wh_settings, room="agent-lost", room_sid="RM_old", status="active",
                      worker_id="live-a:10:AJ_1", heartbeat_at=beat)
    joined = room_event("participant_joined", "agent-lost", sid="RM_new", identity="caller")
    out = deliver(wh_settings, wh_app, joined)
    assert out["action"] == "holder_check" and out["session_id"] == sid
    assert get_session(wh_settings, sid).room_sid == "RM_new"
    [raw] = queued.lrange("live", 0, -1)
    msg = json.loads(raw)
    assert msg["headers"]["task"] == "tasks.resume.resume_if_holder_gone"
    assert json.loads(base64.b64decode(msg["body"]))[0] == [sid, "live-a:10:AJ_1", beat.isoformat(), 1]
    eta = datetime.fromisoformat(msg["headers"]["eta"])
    assert abs((eta - beat).total_seconds() - (HOLDER_SILENT_SECONDS + 0.5)) < 1.0
    # the new room's other events find the session; no webhook session is made for the room
    again = deliver(wh_settings, wh_app, room_event("room_started", "agent-lost", sid="RM_new"))
    assert again["action"] == "holder_check" and again["session_id"] == sid
    assert len(queued.lrange("live", 0, -1)) == 2  # looked at twice: the first check decides
    joined_again = room_event("participant_joined", "agent-lost", sid="RM_new", identity="c2")
    assert deliver(wh_settings, wh_app, joined_again)["action"] == "session_exists"
    with session_scope(wh_settings.db.url) as db:
        assert db.query(AgentSessionRecord).filter_by(room="agent-lost").count() == 1

    # a cluster keeps the room's sid: room_started for the room of an active session says
    # the room was created again all the same
    same = new_session(wh_settings, room="agent-lost3", room_sid="RM_same", status="active",
                       worker_id="live-b:11:AJ_2", heartbeat_at=beat)
    out = deliver(wh_settings, wh_app, room_event("room_started", "agent-lost3", sid="RM_same"))
    assert out["action"] == "holder_check" and out["session_id"] == same
    assert len(queued.lrange("live", 0, -1)) == 3
    joined_same = room_event("participant_joined", "agent-lost3", sid="RM_same", identity="c")
    assert deliver(wh_settings, wh_app, joined_same)["action"] == "session_exists"

    # held by a resume marker: a resume is on its way, nothing more is asked
    marked = new_session(wh_settings, room="agent-lost2", room_sid="RM_a", status="active",
                         worker_id="resume:0123abcd")
    out = deliver(wh_settings, wh_app, room_event("participant_joined", "agent-lost2",
                                                  sid="RM_b", identity="caller"))
    assert out["action"] == "session_exists" and out["session_id"] == marked
    assert get_session(wh_settings, marked).room_sid == "RM_b"
    assert len(queued.lrange("live", 0, -1)) == 3


def test_the_holder_of_a_recreated_room_is_resumed_only_once_silent(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that still beats is alive (it reports the loss itself); one whose heartbeat
    stayed put for HOLDER_SILENT_SECONDS died with the node: the session is resumed, once."""
    from datetime import UTC, datetime, timedelta

    import tasks.resume as resume_mod

    async def room_state(*_: object) -> tuple[int, int, int]:
        return 1, 0, 0  # the caller is back, no agent of the session

    dispatched: list[str] = []

    async def dispatch(_settings: Settings, room: str, metadata: str) -> str:
        dispatched.append(room)
        return "AD_2"

    monkeypatch.setattr(resume_mod, "_room_state", room_state)
    monkeypatch.setattr(resume_mod, "_dispatch", dispatch)
    now = datetime.now(UTC)
    old, fresh = now - timedelta(seconds=30), now - timedelta(seconds=2)
    holder = "live-a:1:AJ_5"

    alive = new_session(settings, room="h1", status="active", worker_id=holder, heartbeat_at=fresh)
    out = resume_mod.resume_if_gone(settings, alive, holder, old.isoformat())
    assert out["action"] == "holder_alive"  # it beat after the new room's webhook saw it

    young = new_session(settings, room="h2", status="active", worker_id=holder, heartbeat_at=fresh)
    out = resume_mod.resume_if_gone(settings, young, holder, fresh.isoformat())
    assert out["action"] == "waiting" and 0 < out["wait_s"] <= resume_mod.HOLDER_SILENT_SECONDS

    gone = new_session(settings, room="h3", status="active", worker_id=holder, heartbeat_at=old)
    out = resume_mod.resume_if_gone(settings, gone, holder, old.isoformat())
    assert out["action"] == "dispatched" and dispatched == ["h3"]
    assert (get_session(settings, gone).worker_id or "").startswith("resume:")
    again = resume_mod.resume_if_gone(settings, gone, holder, old.isoformat())
    assert again["action"] == "not_held" and dispatched == ["h3"]
