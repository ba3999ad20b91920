"""Keyed writes shared by the live workers and the Celery tasks.

Usage arrives as cumulative snapshots; keeping the largest value under the unique key
(session, provider, metric) makes every report idempotent and order-independent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import UsageRecord, utcnow


def record_usage(
    db: Session, session_id: str, provider: str, metric: str, quantity: float
) -> None:
    """Store a cumulative usage snapshot: the row keeps the largest value reported.

    The live worker may report the same or an older snapshot again (retries, reconnects);
    keeping the maximum makes every report idempotent and order-independent.
    """
    if quantity < 0:
        raise ValueError("usage quantity must not be negative")
    provider, metric = provider[:32], metric[:32]
    values = {
        "session_id": session_id,
        "provider": provider,
        "metric": metric,
        "quantity": float(quantity),
        "updated_at": utcnow(),
    }
    dialect = db.get_bind().dialect.name
    stmt: Any
    if dialect == "sqlite":
        ins = sqlite.insert(UsageRecord).values(**values)
        stmt = ins.on_conflict_do_update(
            index_elements=["session_id", "provider", "metric"],
            set_={
                "quantity": func.max(UsageRecord.quantity, ins.excluded.quantity),
                "updated_at": ins.excluded.updated_at,
            },
        )
    elif dialect == "postgresql":
        pins = postgresql.insert(UsageRecord).values(**values)
        stmt = pins.on_conflict_do_update(
            constraint="uq_usage_key",
            set_={
                "quantity": func.greatest(UsageRecord.quantity, pins.excluded.quantity),
                "updated_at": pins.excluded.updated_at,
            },
        )
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(dialect)
    db.execute(stmt)
