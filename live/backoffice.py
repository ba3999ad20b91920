"""How the live worker reaches the back office: Celery messages sent by task name.

The worker does not import ``tasks`` (no import cycle between the top-level packages): it
publishes the message the Celery worker consumes, by the task's name, on the queue the back
office routes it to (Celery's ``send_task``). ``tests/live/test_backoffice.py`` holds the name
and the queue against ``tasks.app``, so a rename there fails a test instead of losing bills.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from config.settings import Settings

logger = logging.getLogger(__name__)

FINALIZE_TASK = "tasks.maintenance.finalize_session"
BATCH_QUEUE = "batch"  # tasks.app.BATCH_QUEUE
RESUME_TASK = "tasks.resume.resume_session"
LIVE_QUEUE = "live"  # tasks.app.LIVE_QUEUE

_lock = threading.Lock()
_senders: dict[str, Celery] = {}


def sender(settings: Settings) -> Celery:
    """A send-only Celery app for the settings' broker, built once per process.

    Never the thread-local ``current_app``: the worker sends from ``asyncio.to_thread``.
    Connection timeouts are short, so a broker that is down costs seconds, not minutes.
    """
    url = settings.broker.effective_url
    with _lock:
        app = _senders.get(url)
        if app is None:
            app = Celery("avatar-live", broker=url, set_as_current=False)
            app.conf.update(
                task_serializer="json",
                accept_content=["json"],
                broker_connection_timeout=5,
                broker_transport_options={"socket_timeout": 10, "socket_connect_timeout": 3},
                redis_socket_timeout=10,
                redis_socket_connect_timeout=3,
            )
            _senders[url] = app
        return app


def request_finalize(settings: Settings, session_id: str) -> bool:
    """Enqueue a just-ended session's finalisation; False (logged) if the broker refused.

    Never raises: the session is already ENDED in the store, and the back office's
    reconciliation (the outbox) enqueues it again until it is billed.
    """
    try:
        sender(settings).send_task(FINALIZE_TASK, args=(session_id,), queue=BATCH_QUEUE)
        return True
    except Exception:
        logger.exception(
            "could not enqueue post-processing; reconciliation will bill the session",
            extra={"session_id": session_id},
        )
        return False


def request_resume(settings: Settings, session_id: str, worker_id: str) -> bool:
    """Ask for the session to be dispatched again: this job lost its room (its LiveKit node
    died), and no webhook will say so. False (logged) if the broker refused; never raises:
    the session then stops beating and reconciliation ends it."""
    try:
        sender(settings).send_task(RESUME_TASK, args=(session_id, worker_id, True),
                                   queue=LIVE_QUEUE)
        return True
    except Exception:
        logger.exception("could not ask for a resume; the session will be ended",
                         extra={"session_id": session_id})
        return False
