"""Usage and cost accounting.

The live worker reports cumulative usage snapshots with :func:`record_usage` (an upsert that
keeps the largest snapshot, so a late or repeated report changes nothing). `account_usage`
prices a session's usage into `session_costs` (replaced as a whole, under the unique key
session/provider/metric) and then *recomputes* the day's `daily_usage` rows from
`session_costs`: totals are never incremented, so running it any number of times, in any
order, yields the same numbers.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from celery import shared_task
from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from config.catalog import SLOT_METRICS
from config.settings import Settings
from store.models import (
    AgentSessionRecord,
    DailyUsage,
    SessionCost,
    UsageRecord,
    utcnow,
)
from store.writes import record_usage
from tasks.base import AvatarTask, TransientError

logger = logging.getLogger(__name__)

ROOM_PROVIDER = "livekit"
ROOM_METRIC = "room_minutes"
METRICS = (*(m for metrics in SLOT_METRICS.values() for m in metrics), ROOM_METRIC)


@dataclass(frozen=True)
class CostLine:
    provider: str
    metric: str
    quantity: float
    unit_price: float

    @property
    def cost(self) -> float:
        return self.quantity * self.unit_price




def _aware(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def session_day(record: AgentSessionRecord) -> date:
    """The (UTC) day a session is billed on: the day it started."""
    start = _aware(record.started_at or record.provisioned_at or record.created_at)
    assert start is not None
    return start.astimezone(UTC).date()


def room_minutes(record: AgentSessionRecord) -> float | None:
    """Minutes the session's room ran, once the session has ended."""
    start = _aware(record.started_at or record.provisioned_at)
    end = _aware(record.ended_at)
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds()) / 60.0


def cost_lines(
    settings: Settings, record: AgentSessionRecord, usage: list[UsageRecord]
) -> list[CostLine]:
    """The priced usage of one session (pure: used by the task and by reports)."""
    lines = [
        CostLine(u.provider, u.metric, u.quantity, settings.pricing.price(u.provider, u.metric))
        for u in usage
    ]
    minutes = room_minutes(record)
    if minutes is not None:
        lines.append(
            CostLine(
                ROOM_PROVIDER,
                ROOM_METRIC,
                minutes,
                settings.pricing.price(ROOM_PROVIDER, ROOM_METRIC),
            )
        )
    return sorted(lines, key=lambda c: (c.provider, c.metric))


def _lock_day(db: Session, day: date) -> None:
    """Serialise recomputations of one day (PostgreSQL; SQLite has one writer anyway)."""
    if db.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"daily_usage:{day.isoformat()}".encode())
        db.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def recompute_daily(db: Session, day: date) -> list[DailyUsage]:
    """Rebuild the `daily_usage` rows of `day` from `session_costs`.

    The DELETE comes first: on SQLite it takes the write lock, so the aggregate read below
    sees every committed cost and nobody commits new ones before we do.
    """
    _lock_day(db, day)
    db.execute(delete(DailyUsage).where(DailyUsage.day == day))
    rows = db.execute(
        select(
            SessionCost.provider,
            SessionCost.metric,
            func.sum(SessionCost.quantity),
            func.sum(SessionCost.cost),
            func.count(func.distinct(SessionCost.session_id)),
        )
        .where(SessionCost.day == day)
        .group_by(SessionCost.provider, SessionCost.metric)
        .order_by(SessionCost.provider, SessionCost.metric)
    ).all()
    out = [
        DailyUsage(
            day=day,
            provider=provider,
            metric=metric,
            quantity=float(quantity or 0.0),
            cost=float(cost or 0.0),
            sessions=int(n or 0),
        )
        for provider, metric, quantity, cost, n in rows
    ]
    db.add_all(out)
    db.flush()
    return out


def account_session(db: Session, settings: Settings, session_id: str) -> dict[str, Any] | None:
    """Price one session and recompute its day (and a day it moved away from)."""
    record = db.get(AgentSessionRecord, session_id)
    if record is None:
        return None
    day = session_day(record)
    # Write first (see recompute_daily): replace the session's costs as a whole.
    old_days = set(
        db.scalars(select(SessionCost.day).where(SessionCost.session_id == session_id)).all()
    )
    db.execute(delete(SessionCost).where(SessionCost.session_id == session_id))
    usage = list(
        db.scalars(
            select(UsageRecord)
            .where(UsageRecord.session_id == session_id)
            .order_by(UsageRecord.provider, UsageRecord.metric)
        ).all()
    )
    lines = cost_lines(settings, record, usage)
    now = utcnow()
    db.add_all(
        SessionCost(
            session_id=session_id,
            day=day,
            provider=c.provider,
            metric=c.metric,
            quantity=c.quantity,
            unit_price=c.unit_price,
            cost=c.cost,
            computed_at=now,
        )
        for c in lines
    )
    # The outbox marker: reconciliation bills every ENDED session without it, so a lost
    # finalisation message or exhausted retries cannot lose the bill. Set in the same
    # transaction as the costs; a later run (new usage) replaces the costs, keeps the stamp.
    if record.billed_at is None:
        record.billed_at = now
    db.flush()
    for d in sorted(old_days | {day}):
        recompute_daily(db, d)
    total = sum(c.cost for c in lines)
    return {
        "session_id": session_id,
        "day": day.isoformat(),
        "lines": len(lines),
        "cost": round(total, 8),
        "currency": settings.pricing.currency,
    }


@shared_task(
    base=AvatarTask,
    bind=True,
    name="tasks.usage.account_usage",
    autoretry_for=(TransientError, OperationalError, IntegrityError),
)
def account_usage(self: AvatarTask, session_id: str) -> dict[str, Any]:
    """Price a session's usage into `session_costs` and recompute its day's totals.

    Safe to run twice: the session's cost rows are replaced (not added to) and the day's
    totals are recomputed from all cost rows; a concurrent run for the same key fails on the
    unique constraint and retries.
    """
    with self.db() as db:
        result = account_session(db, self.settings, session_id)
    if result is None:
        logger.warning("no such session", extra={"session_id": session_id})
        return {"session_id": session_id, "status": "missing"}
    logger.info("usage accounted", extra=result)
    return result


__all__ = [
    "METRICS",
    "CostLine",
    "account_session",
    "account_usage",
    "cost_lines",
    "recompute_daily",
    "record_usage",
]
