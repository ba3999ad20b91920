"""Tables shared by the live workers, Celery tasks and the web process.

Every write that can be repeated (a retried task, a redelivered webhook, a worker that
reports usage twice) lands under a unique key, so repeating it changes nothing.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class SessionStatus(enum.StrEnum):
    PENDING = "pending"  # recorded, provisioning not yet done
    PROVISIONING = "provisioning"
    DISPATCHED = "dispatched"  # room exists, agent dispatched, agent not yet in the room
    ACTIVE = "active"  # the agent joined and the session runs
    ENDED = "ended"
    FAILED = "failed"

    @classmethod
    def open_states(cls) -> tuple[SessionStatus, ...]:
        return (cls.PENDING, cls.PROVISIONING, cls.DISPATCHED, cls.ACTIVE)


class AgentSessionRecord(Base):
    """One agent conversation in one room."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    room: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), default=SessionStatus.PENDING, index=True)
    # Idempotency key of the request that created the session (API header, webhook room sid).
    request_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    source: Mapped[str] = mapped_column(String(16), default="api")  # api | admin | webhook | cli
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # config.session.SessionSpec
    stt_provider: Mapped[str] = mapped_column(String(32), default="local")
    llm_provider: Mapped[str] = mapped_column(String(32), default="local")
    tts_provider: Mapped[str] = mapped_column(String(32), default="local")
    avatar_provider: Mapped[str] = mapped_column(String(32), default="local")
    dispatch_id: Mapped[str | None] = mapped_column(String(64))
    room_sid: Mapped[str | None] = mapped_column(String(64))
    worker_id: Mapped[str | None] = mapped_column(String(64))
    caller_identity: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    end_reason: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    provisioned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    postprocessed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set by `account_usage` in the transaction that writes the session's costs: an ENDED
    # session without it was never billed (its finalisation was lost), and reconciliation
    # enqueues it again.
    billed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Written every few seconds by the live worker running the session (with its usage): an
    # ACTIVE session whose heartbeat stopped lost its worker, even if the room lives on.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    lines: Mapped[list[TranscriptLine]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="TranscriptLine.started_at"
    )
    turns: Mapped[list[TurnMetric]] = relationship(
        back_populates="session", cascade="all, delete-orphan", order_by="TurnMetric.created_at"
    )

    @property
    def is_open(self) -> bool:
        return self.status in SessionStatus.open_states()

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at or utcnow()
        start = self.started_at
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        if end.tzinfo is None:
            end = end.replace(tzinfo=UTC)
        return max(0.0, (end - start).total_seconds())


class TranscriptLine(Base):
    """One final utterance; written by the live worker as it happens."""

    __tablename__ = "transcript_lines"
    __table_args__ = (UniqueConstraint("session_id", "item_id", name="uq_line_item"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(64))  # the chat item id: the idempotency key
    speaker: Mapped[str] = mapped_column(String(16))  # user | agent
    text: Mapped[str] = mapped_column(Text)
    language: Mapped[str | None] = mapped_column(String(16))
    interrupted: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    session: Mapped[AgentSessionRecord] = relationship(back_populates="lines")


class TurnMetric(Base):
    """Latency of one agent turn, in seconds; None where a stage did not run."""

    __tablename__ = "turn_metrics"
    __table_args__ = (UniqueConstraint("session_id", "item_id", name="uq_turn_item"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[str] = mapped_column(String(64))
    end_of_utterance_delay: Mapped[float | None] = mapped_column(Float)
    transcription_delay: Mapped[float | None] = mapped_column(Float)
    llm_ttft: Mapped[float | None] = mapped_column(Float)
    tts_ttfb: Mapped[float | None] = mapped_column(Float)
    avatar_first_frame: Mapped[float | None] = mapped_column(Float)
    e2e_latency: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    session: Mapped[AgentSessionRecord] = relationship(back_populates="turns")


class UsageRecord(Base):
    """Units consumed by a session, per provider and metric (cumulative; upserted)."""

    __tablename__ = "usage_records"
    __table_args__ = (
        UniqueConstraint("session_id", "provider", "metric", name="uq_usage_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    provider: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(32))  # stt_audio_seconds, llm_input_tokens, ...
    quantity: Mapped[float] = mapped_column(Float, default=0.0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionCost(Base):
    """Cost of one (session, provider, metric), computed by `account_usage`."""

    __tablename__ = "session_costs"
    __table_args__ = (UniqueConstraint("session_id", "provider", "metric", name="uq_cost_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    provider: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[float] = mapped_column(Float)
    unit_price: Mapped[float] = mapped_column(Float)
    cost: Mapped[float] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DailyUsage(Base):
    """Totals per day, provider and metric; recomputed from `session_costs`, never added to."""

    __tablename__ = "daily_usage"
    __table_args__ = (UniqueConstraint("day", "provider", "metric", name="uq_daily_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    provider: Mapped[str] = mapped_column(String(32))
    metric: Mapped[str] = mapped_column(String(32))
    quantity: Mapped[float] = mapped_column(Float, default=0.0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    sessions: Mapped[int] = mapped_column(Integer, default=0)


class TranscriptReport(Base):
    """Result of `post_process_transcript`: cleaned lines, statistics and exports."""

    __tablename__ = "transcript_reports"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    lines: Mapped[list[Any]] = mapped_column(JSON, default=list)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    export_json: Mapped[str] = mapped_column(Text, default="")
    export_vtt: Mapped[str] = mapped_column(Text, default="")
    export_srt: Mapped[str] = mapped_column(Text, default="")
    export_markdown: Mapped[str] = mapped_column(Text, default="")
    source_line_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Summary(Base):
    """Result of `summarize_session`."""

    __tablename__ = "summaries"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(64))
    summary: Mapped[str] = mapped_column(Text)
    key_points: Mapped[list[Any]] = mapped_column(JSON, default=list)
    action_items: Mapped[list[Any]] = mapped_column(JSON, default=list)
    sentiment: Mapped[str] = mapped_column(String(16))  # positive | neutral | negative
    source_line_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebhookEvent(Base):
    """LiveKit webhook ids already handled: LiveKit retries, we must not act twice."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    room: Mapped[str | None] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdminUser(Base):
    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ApiToken(Base):
    """API bearer tokens; only a sha256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # space-separated, e.g. "sessions:read sessions:write" (web.auth.SCOPES)
    scopes: Mapped[str] = mapped_column(String(255), default="sessions:read sessions:write")


Index("ix_sessions_status_created", AgentSessionRecord.status, AgentSessionRecord.created_at)
