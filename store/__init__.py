"""Persistence shared by the live workers, Celery tasks and the web process."""

from store.db import get_engine, session_factory, session_scope, upgrade_db
from store.models import (
    AdminUser,
    AgentSessionRecord,
    ApiToken,
    Base,
    DailyUsage,
    SessionCost,
    SessionStatus,
    Summary,
    TranscriptLine,
    TranscriptReport,
    TurnMetric,
    UsageRecord,
    WebhookEvent,
)

__all__ = [
    "AdminUser",
    "AgentSessionRecord",
    "ApiToken",
    "Base",
    "DailyUsage",
    "SessionCost",
    "SessionStatus",
    "Summary",
    "TranscriptLine",
    "TranscriptReport",
    "TurnMetric",
    "UsageRecord",
    "WebhookEvent",
    "get_engine",
    "session_factory",
    "session_scope",
    "upgrade_db",
]
