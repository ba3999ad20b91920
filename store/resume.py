"""A session that outlives its job: one agent per session, and a new job that picks up.

Self-hosted LiveKit does not dispatch a job again when its worker dies (livekit/agents#1472),
so the back office does (`tasks.resume`): it dispatches the agent into the same room again
with the dispatch metadata marked ``resume_from``. The job that takes it claims the session
(:func:`claim_session`), rebuilds the conversation from the stored transcript
(:func:`restored_chat`), adds its own usage on top of what the lost job already wrote
(:func:`stored_usage`), and says :data:`RESUME_LINE` instead of the greeting.

The claim is a compare-and-set on ``sessions.worker_id``: a fresh dispatch takes a session
nobody holds, a resume takes it only from the marker the back office wrote when it saw the
loss. So two dispatches for one session (a retry, a duplicate webhook) never put two agents
in the room: the second job finds the session taken and leaves.
"""

from __future__ import annotations

import json
import os
from typing import Any

from sqlalchemy import select, update

from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, TranscriptLine, UsageRecord

# The dispatch-metadata key a resume adds next to the session spec (removed before parsing).
RESUME_KEY = "resume_from"
RESUME_LINE = "Sorry, I was cut off for a moment. I'm back with you."
# Participant attributes: which session an agent serves and which job holds it; LiveKit's
# participant_left webhook carries them when the agent is gone.
SESSION_ATTR = "avatar.session_id"
WORKER_ATTR = "avatar.worker_id"
# What the back office writes as a session's holder while a resume is on its way to a job.
RESUME_MARKER_PREFIX = "resume:"
# Prior lines given to the LLM after a resume (the newest ones).
HISTORY_LINES = 40


def split_resume(raw: str) -> tuple[str, str | None]:
    """The spec part of the dispatch metadata and the resume marker, if any."""
    if RESUME_KEY not in raw:
        return raw, None
    try:
        data = json.loads(raw)
    except ValueError:
        return raw, None
    if not isinstance(data, dict) or not isinstance(data.get(RESUME_KEY), str):
        return raw, None
    marker = data.pop(RESUME_KEY)
    return json.dumps(data), marker


def resume_metadata(spec_json: str, marker: str) -> str:
    """The dispatch metadata of a resume: the session's spec plus the marker."""
    data = json.loads(spec_json) if spec_json.strip() else {}
    data[RESUME_KEY] = marker
    return json.dumps(data)


def job_worker_id(job_id: str) -> str:
    """Who holds a session: host (the worker's HOSTNAME), job process, job."""
    return f"{os.environ.get('HOSTNAME', '')[:20]}:{os.getpid()}:{job_id}"[:64]


def claim_session(db_url: str, session_id: str, worker_id: str, resume_from: str | None) -> bool:
    """Take the session for this job; False if another job holds it (or it has ended).

    A fresh dispatch takes an open session nobody holds (or that this job already holds);
    a resume takes it only from the back office's marker.
    """
    held_by = AgentSessionRecord.worker_id
    cond = held_by == resume_from if resume_from else held_by.is_(None) | (held_by == worker_id)
    with session_scope(db_url) as db:
        result = db.execute(
            update(AgentSessionRecord)
            .where(
                AgentSessionRecord.id == session_id,
                AgentSessionRecord.status.in_(list(SessionStatus.open_states())),
                cond,
            )
            .values(worker_id=worker_id)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(result, "rowcount", 0))


def holds_session(db_url: str, session_id: str, worker_id: str) -> bool:
    """Whether this job still holds the session (a job cut off from the room, whose session
    was resumed elsewhere, must not end it)."""
    with session_scope(db_url) as db:
        held = db.scalar(select(AgentSessionRecord.worker_id).where(
            AgentSessionRecord.id == session_id))
    return held == worker_id


def stored_lines(db_url: str, session_id: str, limit: int = HISTORY_LINES) -> list[TranscriptLine]:
    with session_scope(db_url) as db:
        rows = db.scalars(
            select(TranscriptLine)
            .where(TranscriptLine.session_id == session_id)
            .order_by(TranscriptLine.started_at.desc(), TranscriptLine.id.desc())
            .limit(limit)
        ).all()
        for row in rows:
            db.expunge(row)
    return list(reversed(rows))


def restored_chat(lines: list[TranscriptLine]) -> Any:
    """The conversation so far as LiveKit chat items, under their stored item ids (so the
    recorder, keyed by item id, never stores them twice)."""
    from livekit.agents import llm

    ctx = llm.ChatContext.empty()
    for line in lines:
        ctx.add_message(
            role="user" if line.speaker == "user" else "assistant",
            content=line.text,
            id=line.item_id,
            interrupted=line.interrupted,
            created_at=line.started_at.timestamp(),
        )
    return ctx


def stored_usage(db_url: str, session_id: str) -> dict[tuple[str, str], float]:
    """What the session's earlier jobs metered: the new job counts on top of it."""
    with session_scope(db_url) as db:
        rows = db.execute(
            select(UsageRecord.provider, UsageRecord.metric, UsageRecord.quantity).where(
                UsageRecord.session_id == session_id)
        ).all()
    return {(p, m): float(q) for p, m, q in rows}


def plus_baseline(
    rows: dict[tuple[str, str], float], baseline: dict[tuple[str, str], float] | None
) -> dict[tuple[str, str], float]:
    """This job's cumulative usage added to the earlier jobs' (usage rows keep the largest
    snapshot, so the sum is what the session used, counted once)."""
    if not baseline:
        return rows
    out = dict(baseline)
    for key, qty in rows.items():
        out[key] = out.get(key, 0.0) + qty
    return out
