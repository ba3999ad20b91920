"""The Celery application of the back office, built from :class:`config.settings.Settings`.

`make_celery(settings)` builds an app bound to one broker, result backend and database (tests
build their own); the module-level `app` is the process-wide one, built from `get_settings()`.
Building an app never connects to the broker, so web views and the live worker can import
this module without Valkey running.

Queues: `live` (provisioning: latency matters, give it a worker of its own) and `batch`
(post-processing, summaries, accounting, beat jobs).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

from celery import Celery, signals
from kombu import Queue

from config.settings import Settings, get_settings

LIVE_QUEUE = "live"
BATCH_QUEUE = "batch"

TASK_MODULES = (
    "tasks.provisioning",
    "tasks.transcripts",
    "tasks.summaries",
    "tasks.usage",
    "tasks.maintenance",
    "tasks.resume",
)

# Order matters: the first matching glob wins.
TASK_ROUTES: dict[str, dict[str, str]] = {
    "tasks.provisioning.*": {"queue": LIVE_QUEUE},
    "tasks.resume.*": {"queue": LIVE_QUEUE},  # a caller is waiting for the agent to return
    "tasks.*": {"queue": BATCH_QUEUE},
}

RECONCILE_EVERY = timedelta(minutes=2)
PURGE_EVERY = timedelta(hours=6)


class AvatarCelery(Celery):  # type: ignore[misc]
    """A Celery app that carries the settings its tasks run with."""

    settings: Settings


def make_celery(settings: Settings, *, set_as_current: bool = True) -> AvatarCelery:
    """Build a Celery app bound to `settings` (broker, backend, database, beat schedule).

    Args:
        settings: the process settings; tasks executed by this app read them.
        set_as_current: make it `celery.current_app` (the process-wide app does; an app built
            only to send tasks to another broker should not).
    """
    app = AvatarCelery(
        "avatar",
        broker=settings.broker.effective_url,
        backend=settings.broker.effective_backend,
        include=list(TASK_MODULES),
        set_as_current=set_as_current,
    )
    app.settings = settings
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        # Most tasks write their result to the database; the few whose return value is
        # useful (provisioning, ping) opt in with ignore_result=False.
        task_ignore_result=True,
        result_expires=int(timedelta(hours=6).total_seconds()),
        result_extended=False,
        # Every task is idempotent, so a message is acknowledged only after the task ran and
        # comes back if the worker dies mid-task.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=240,
        task_time_limit=300,
        task_default_queue=BATCH_QUEUE,
        task_queues=(Queue(LIVE_QUEUE), Queue(BATCH_QUEUE)),
        task_routes=TASK_ROUTES,
        task_create_missing_queues=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        # Redis redelivers unacknowledged messages after the visibility timeout (a worker
        # killed outright, a broker lost mid-ack): by default three times the longest hard
        # time limit, so a task still running is not delivered twice, and a lost one is back
        # within 15 minutes (`broker.visibility_timeout_seconds`). A connection that cannot be made fails in seconds (a web request answers
        # 503 then), instead of waiting for the operating system's connect timeout.
        # Each worker looks for such messages at start and then every few seconds (kombu's
        # default sweep is every 100 s: a lost task would wait up to that much more).
        broker_transport_options={
            "visibility_timeout": settings.broker.visibility_timeout_seconds,
            "unacked_restore_interval": min(10, max(1, settings.broker.visibility_timeout_seconds // 3)),
            "unacked_restore_throttle": 1,
            "socket_timeout": 10,
            "socket_connect_timeout": 3,
        },
        result_backend_transport_options={"socket_timeout": 10, "socket_connect_timeout": 3},
        redis_socket_timeout=10,
        redis_socket_connect_timeout=3,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile-sessions": {
                "task": "tasks.maintenance.reconcile_sessions",
                "schedule": RECONCILE_EVERY.total_seconds(),
                "options": {"expires": RECONCILE_EVERY.total_seconds()},
            },
            "purge-old-transcripts": {
                "task": "tasks.maintenance.purge_old_transcripts",
                "schedule": PURGE_EVERY.total_seconds(),
                "options": {"expires": PURGE_EVERY.total_seconds()},
            },
        },
    )
    return app


_lock = threading.Lock()
_default: AvatarCelery | None = None
_senders: dict[tuple[str, str], AvatarCelery] = {}


def get_app() -> AvatarCelery:
    """The process-wide app, built from `get_settings()` on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = make_celery(get_settings())
        return _default


def app_for(settings: Settings) -> AvatarCelery:
    """An app that sends to `settings`' broker: the process-wide one when it matches.

    Web views and the webhook handler get their settings passed in (tests pass their own);
    this returns an app that reaches the same broker without touching `current_app`.
    """
    default = get_app()
    key = (settings.broker.effective_url, settings.broker.effective_backend)
    if (default.settings.broker.effective_url, default.settings.broker.effective_backend) == key:
        return default
    with _lock:
        found = _senders.get(key)
        if found is None:
            found = make_celery(settings, set_as_current=False)
            _senders[key] = found
        return found


@signals.worker_init.connect
def _guard_dead_channel(**_: Any) -> None:
    """Keep the worker alive when the broker dies while it holds unacknowledged messages.

    With kombu 5.7's Redis transport, a connection lost mid-task is closed at once; then both
    restoring the unacknowledged messages (on close) and acknowledging a task that finishes
    afterwards go through the closed channel and fail with an AttributeError, not a
    connection error, which Celery treats as unrecoverable: the worker exits. Those messages
    are in the broker's unacked index (persisted), from which a worker restores them after
    the visibility timeout and the (idempotent) task runs again: skipping the local restore
    or acknowledgement loses nothing, and the worker reconnects instead of dying.
    """
    import logging

    from kombu.transport import redis as kombu_redis

    qos = kombu_redis.QoS
    log = logging.getLogger(__name__)

    def channel_gone(self: Any) -> bool:
        transport = getattr(self.channel, "connection", None)
        return transport is None or getattr(transport, "client", None) is None

    def guard(name: str) -> None:
        original = getattr(qos, name)
        if getattr(original, "_avatar_guarded", False):
            return

        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return original(self, *args, **kwargs)
            except AttributeError:
                if not channel_gone(self):
                    raise
                log.warning(
                    "broker connection lost during %s: the message(s) are redelivered from the "
                    "broker after the visibility timeout", name,
                )
                if name == "restore_unacked":
                    self._delivered.clear()
                return None

        guarded._avatar_guarded = True  # type: ignore[attr-defined]
        setattr(qos, name, guarded)

    for name in ("restore_unacked", "ack", "reject"):
        guard(name)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _add_log_filters(logger: Any = None, **_: Any) -> None:
    """Worker logs carry the task's ids (task_id, task_name, session_id) and never secrets."""
    import logging

    from config.logging import SecretMaskFilter, install_secret_mask
    from tasks.base import TaskContextFilter

    target = logger or logging.getLogger()
    secrets = get_app().settings.secret_values()
    install_secret_mask(secrets)  # records of every logger, including extra= and tracebacks
    for handler in target.handlers:
        if not any(isinstance(f, TaskContextFilter) for f in handler.filters):
            handler.addFilter(TaskContextFilter())
            handler.addFilter(SecretMaskFilter(secrets))


def __getattr__(name: str) -> Any:
    # `celery -A tasks.app worker` and `from tasks.app import app` build the app lazily.
    if name == "app":
        return get_app()
    raise AttributeError(name)
