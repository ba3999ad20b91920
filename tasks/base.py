"""The one base class of every task, errors, log context and enqueue-after-commit.

A task is a thin wrapper (like a web view): it takes ids, opens one transaction through
:meth:`AvatarTask.db`, calls a service function that checks "already done" first, and retries
transient failures with exponential backoff and jitter.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task
from celery.canvas import Signature
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from config.settings import Settings, get_settings
from store.db import session_scope

logger = logging.getLogger(__name__)

_log_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "avatar_task_log_context", default=None
)


class ServiceError(Exception):
    """Base of the back office's own errors (the web layer maps them to HTTP)."""


class TransientError(ServiceError):
    """Worth retrying: a dependency (LiveKit, the LLM, the database) was briefly unavailable."""


class NotFoundError(ServiceError):
    """The record a task or view was asked about does not exist."""


class TaskContextFilter(logging.Filter):
    """Adds the running task's ids (task_id, task_name, session_id) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _log_context.get()
        if ctx:
            for key, value in ctx.items():
                if not hasattr(record, key):
                    setattr(record, key, value)
        return True


def log_context() -> dict[str, Any]:
    """The ids bound to the current task (empty outside a task)."""
    return dict(_log_context.get() or {})


class AvatarTask(Task):  # type: ignore[misc]
    """Base task: DB transaction, settings, log context and retry defaults.

    Subclass options are defaults; a task overrides them in its decorator. Keep them here:
    a misspelt option in a decorator is silently accepted by Celery.
    """

    abstract = True
    autoretry_for: tuple[type[BaseException], ...] = (TransientError, OperationalError)
    retry_backoff: bool | int = 1
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 6
    acks_late = True
    reject_on_worker_lost = True
    # One hard ceiling per call; the soft limit raises inside the task first.
    soft_time_limit = 120
    time_limit = 180

    @property
    def settings(self) -> Settings:
        """The settings of the app that runs this task."""
        found = getattr(self.app, "settings", None)
        return found if isinstance(found, Settings) else get_settings()

    @contextmanager
    def db(self) -> Iterator[Session]:
        """One transaction, committed when the block succeeds."""
        with session_scope(self.settings.db.url) as session:
            yield session

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ctx: dict[str, Any] = {"task_id": self.request.id, "task_name": self.name}
        if args and isinstance(args[0], str):
            ctx["session_id"] = args[0]
        elif isinstance(kwargs.get("session_id"), str):
            ctx["session_id"] = kwargs["session_id"]
        if self.request.retries:
            ctx["retry"] = self.request.retries
        token = _log_context.set(ctx)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _log_context.reset(token)


# --------------------------------------------------------------------------- after commit

_PENDING_KEY = "avatar_after_commit"


def _flush_pending(session: Session) -> None:
    pending: list[Signature] = session.info.pop(_PENDING_KEY, [])
    for sig in pending:
        try:
            sig.apply_async()
        except Exception:  # the commit is done: report, and let reconcile pick it up later
            logger.exception("enqueue after commit failed", extra={"task_name": sig.task})


def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_KEY, None)


def enqueue_after_commit(db: Session, sig: Signature) -> None:
    """Send `sig` once `db`'s transaction commits; never if it rolls back.

    A task enqueued before the commit could run before its rows are visible (and find
    nothing) or act on rows that are then rolled back.
    """
    if _PENDING_KEY not in db.info:
        db.info[_PENDING_KEY] = []
        if not event.contains(db, "after_commit", _flush_pending):
            event.listen(db, "after_commit", _flush_pending)
            event.listen(db, "after_soft_rollback", _on_rollback)
    db.info[_PENDING_KEY].append(sig)


def _on_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the outermost transaction rolled back
        _drop_pending(session)
