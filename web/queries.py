"""Read models shared by the admin pages and the JSON API (no Flask imports here)."""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from config.settings import Settings
from store.models import (
    AgentSessionRecord,
    SessionCost,
    SessionStatus,
    Summary,
    TranscriptLine,
    TranscriptReport,
    TurnMetric,
    UsageRecord,
)

LATENCY_STAGES: tuple[tuple[str, str], ...] = (
    ("end_of_utterance_delay", "End of turn"),
    ("transcription_delay", "Transcription"),
    ("llm_ttft", "LLM first token"),
    ("tts_ttfb", "TTS first byte"),
    ("avatar_first_frame", "Avatar first frame"),
)
PROGRESS_STEPS: tuple[tuple[str, str], ...] = (
    (SessionStatus.PENDING, "Recorded"),
    (SessionStatus.PROVISIONING, "Creating room"),
    (SessionStatus.DISPATCHED, "Agent dispatched"),
    (SessionStatus.ACTIVE, "Agent in room"),
    (SessionStatus.ENDED, "Ended"),
)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def iso(value: datetime | None) -> str | None:
    v = as_utc(value)
    return v.isoformat().replace("+00:00", "Z") if v else None


def day_start(d: date) -> datetime:
    return datetime.combine(d, time.min, tzinfo=UTC)


def session_dict(record: AgentSessionRecord) -> dict[str, Any]:
    """The public view of a session (API and status polling)."""
    return {
        "id": record.id,
        "room": record.room,
        "status": record.status,
        "source": record.source,
        "providers": {
            "stt": record.stt_provider,
            "llm": record.llm_provider,
            "tts": record.tts_provider,
            "avatar": record.avatar_provider,
        },
        "error": record.error,
        "end_reason": record.end_reason,
        "created_at": iso(record.created_at),
        "provisioned_at": iso(record.provisioned_at),
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at),
        "duration_seconds": record.duration_seconds,
        "is_open": record.is_open,
    }


def progress(record: AgentSessionRecord) -> list[dict[str, Any]]:
    """Stepper state: each step done, current or todo (failed marks the current one)."""
    order = [s for s, _ in PROGRESS_STEPS]
    status = record.status
    if status == SessionStatus.FAILED:
        reached = 1 if record.provisioned_at is None else 2
        if record.started_at is not None:
            reached = 3
        current = reached
    else:
        current = order.index(status) if status in order else 0
    steps = []
    for i, (key, label) in enumerate(PROGRESS_STEPS):
        if status == SessionStatus.FAILED and i == current:
            state = "failed"
        elif i < current or (status == SessionStatus.ENDED and i == current):
            state = "done"
        elif i == current:
            state = "current"
        else:
            state = "todo"
        steps.append({"key": str(key), "label": label, "state": state})
    return steps


def line_dict(line: TranscriptLine) -> dict[str, Any]:
    return {
        "id": line.id,
        "speaker": line.speaker,
        "text": line.text,
        "language": line.language,
        "interrupted": line.interrupted,
        "started_at": iso(line.started_at),
        "ended_at": iso(line.ended_at),
    }


def transcript_lines(db: Session, session_id: str, *, after_id: int = 0) -> list[TranscriptLine]:
    return list(
        db.scalars(
            select(TranscriptLine)
            .where(TranscriptLine.session_id == session_id, TranscriptLine.id > after_id)
            .order_by(TranscriptLine.started_at, TranscriptLine.id)
        )
    )


def summary_dict(summary: Summary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "model": summary.model,
        "summary": summary.summary,
        "key_points": list(summary.key_points or []),
        "action_items": list(summary.action_items or []),
        "sentiment": summary.sentiment,
        "source_line_count": summary.source_line_count,
        "created_at": iso(summary.created_at),
    }


@dataclass
class UsageRow:
    provider: str
    metric: str
    quantity: float
    unit_price: float
    cost: float


@dataclass
class UsageBreakdown:
    rows: list[UsageRow] = field(default_factory=list)
    final: bool = False  # costs computed by the back office, not estimated here

    @property
    def total(self) -> float:
        return sum(r.cost for r in self.rows)

    def as_dict(self, currency: str) -> dict[str, Any]:
        return {
            "currency": currency,
            "final": self.final,
            "total_cost": round(self.total, 6),
            "items": [r.__dict__ for r in self.rows],
        }


def usage_breakdown(db: Session, settings: Settings, session_id: str) -> UsageBreakdown:
    """Costs as accounted by the back office; before that, an estimate from the price table."""
    costs = list(
        db.scalars(
            select(SessionCost)
            .where(SessionCost.session_id == session_id)
            .order_by(SessionCost.provider, SessionCost.metric)
        )
    )
    if costs:
        return UsageBreakdown(
            [UsageRow(c.provider, c.metric, c.quantity, c.unit_price, c.cost) for c in costs],
            final=True,
        )
    usage = db.scalars(
        select(UsageRecord)
        .where(UsageRecord.session_id == session_id)
        .order_by(UsageRecord.provider, UsageRecord.metric)
    )
    rows = []
    for u in usage:
        price = settings.pricing.price(u.provider, u.metric)
        rows.append(UsageRow(u.provider, u.metric, u.quantity, price, u.quantity * price))
    return UsageBreakdown(rows, final=False)


def turn_latencies(db: Session, session_id: str) -> list[TurnMetric]:
    return list(
        db.scalars(
            select(TurnMetric).where(TurnMetric.session_id == session_id).order_by(TurnMetric.created_at)
        )
    )


def get_report(db: Session, session_id: str) -> TranscriptReport | None:
    return db.get(TranscriptReport, session_id)


# --------------------------------------------------------------------------- lists


@dataclass(frozen=True)
class SessionFilters:
    status: str | None = None
    room: str | None = None
    provider: str | None = None
    date_from: date | None = None
    date_to: date | None = None


def filtered_sessions(
    db: Session, f: SessionFilters, *, page: int, per_page: int
) -> tuple[list[AgentSessionRecord], int]:
    """One page of sessions, newest first, and the total count."""
    q = select(AgentSessionRecord)
    if f.status:
        q = q.where(AgentSessionRecord.status == f.status)
    if f.room:
        q = q.where(AgentSessionRecord.room.contains(f.room, autoescape=True))
    if f.provider:
        q = q.where(
            or_(
                AgentSessionRecord.stt_provider == f.provider,
                AgentSessionRecord.llm_provider == f.provider,
                AgentSessionRecord.tts_provider == f.provider,
                AgentSessionRecord.avatar_provider == f.provider,
            )
        )
    if f.date_from:
        q = q.where(AgentSessionRecord.created_at >= day_start(f.date_from))
    if f.date_to:
        q = q.where(AgentSessionRecord.created_at < day_start(f.date_to + timedelta(days=1)))
    total = db.scalar(select(func.count()).select_from(q.subquery())) or 0
    rows = db.scalars(
        q.order_by(AgentSessionRecord.created_at.desc(), AgentSessionRecord.id)
        .offset((page - 1) * per_page)
        .limit(per_page)
    )
    return list(rows), int(total)


def session_costs(db: Session, session_ids: list[str]) -> dict[str, float]:
    if not session_ids:
        return {}
    rows = db.execute(
        select(SessionCost.session_id, func.sum(SessionCost.cost))
        .where(SessionCost.session_id.in_(session_ids))
        .group_by(SessionCost.session_id)
    )
    return {sid: float(total or 0.0) for sid, total in rows}


# --------------------------------------------------------------------------- dashboard


def days_back(today: date, n: int) -> list[date]:
    return [today - timedelta(days=i) for i in range(n - 1, -1, -1)]


def sessions_per_day(db: Session, days: list[date]) -> dict[date, int]:
    counts: dict[date, int] = dict.fromkeys(days, 0)
    created = db.scalars(
        select(AgentSessionRecord.created_at).where(
            AgentSessionRecord.created_at >= day_start(days[0]),
            AgentSessionRecord.created_at < day_start(days[-1] + timedelta(days=1)),
        )
    )
    for c in created:
        d = as_utc(c)
        if d is not None and d.date() in counts:
            counts[d.date()] += 1
    return counts


def cost_per_day(db: Session, days: list[date]) -> dict[date, float]:
    out: dict[date, float] = dict.fromkeys(days, 0.0)
    rows = db.execute(
        select(SessionCost.day, func.sum(SessionCost.cost))
        .where(SessionCost.day >= days[0], SessionCost.day <= days[-1])
        .group_by(SessionCost.day)
    )
    for d, total in rows:
        out[d] = float(total or 0.0)
    return out


def count_open(db: Session) -> dict[str, int]:
    rows = db.execute(
        select(AgentSessionRecord.status, func.count())
        .where(AgentSessionRecord.status.in_([str(s) for s in SessionStatus.open_states()]))
        .group_by(AgentSessionRecord.status)
    )
    return {str(s): int(n) for s, n in rows}


@dataclass
class StageLatency:
    key: str
    label: str
    mean: float | None
    p95: float | None
    count: int


def latency_by_stage(db: Session, since: datetime, session_id: str | None = None) -> list[StageLatency]:
    """Mean and p95 per pipeline stage over turns since `since` (or of one session)."""
    q = select(TurnMetric)
    if session_id is not None:
        q = q.where(TurnMetric.session_id == session_id)
    else:
        q = q.where(TurnMetric.created_at >= since)
    turns = list(db.scalars(q))
    out = []
    for key, label in (*LATENCY_STAGES, ("e2e_latency", "End to end")):
        values = sorted(v for t in turns if (v := getattr(t, key)) is not None)
        if values:
            p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
            out.append(StageLatency(key, label, statistics.fmean(values), p95, len(values)))
        else:
            out.append(StageLatency(key, label, None, None, 0))
    return out


# --------------------------------------------------------------------------- usage page


@dataclass
class UsageReport:
    days: list[date]
    cost_by_day: dict[date, float]
    sessions_by_day: dict[date, int]
    by_provider: list[dict[str, Any]]
    rows: list[dict[str, Any]]  # day, provider, metric, quantity, cost

    @property
    def total_cost(self) -> float:
        return sum(self.cost_by_day.values())

    @property
    def total_sessions(self) -> int:
        return sum(self.sessions_by_day.values())


def usage_report(db: Session, date_from: date, date_to: date) -> UsageReport:
    days = [date_from + timedelta(days=i) for i in range((date_to - date_from).days + 1)]
    rows = db.execute(
        select(
            SessionCost.day,
            SessionCost.provider,
            SessionCost.metric,
            func.sum(SessionCost.quantity),
            func.sum(SessionCost.cost),
            func.count(func.distinct(SessionCost.session_id)),
        )
        .where(SessionCost.day >= date_from, SessionCost.day <= date_to)
        .group_by(SessionCost.day, SessionCost.provider, SessionCost.metric)
        .order_by(SessionCost.day, SessionCost.provider, SessionCost.metric)
    ).all()
    flat: list[dict[str, Any]] = [
        {
            "day": d,
            "provider": p,
            "metric": m,
            "quantity": float(q or 0.0),
            "cost": float(c or 0.0),
            "sessions": int(n),
        }
        for d, p, m, q, c, n in rows
    ]
    by_prov: dict[str, dict[str, Any]] = defaultdict(lambda: {"cost": 0.0, "metrics": {}})
    for r in flat:
        entry = by_prov[r["provider"]]
        entry["cost"] += r["cost"]
        entry["metrics"][r["metric"]] = entry["metrics"].get(r["metric"], 0.0) + r["quantity"]
    by_provider = sorted(
        ({"provider": p, **v} for p, v in by_prov.items()), key=lambda e: -float(e["cost"])
    )
    cost = dict.fromkeys(days, 0.0)
    for r in flat:
        cost[r["day"]] += r["cost"]
    return UsageReport(days, cost, sessions_per_day(db, days), by_provider, flat)
