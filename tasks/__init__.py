"""The Celery back office: provisioning, webhooks, post-processing, summaries, accounting.

`celery -A tasks worker -Q live,batch` finds the app as `tasks.celery`. Importing this package
builds the process-wide app from `get_settings()` (no broker connection is made) and makes it
`current_app`, so `provision_session.delay(id)` works from web views and the live worker.
"""

from __future__ import annotations

from tasks.app import AvatarCelery, app_for, get_app, make_celery
from tasks.base import ServiceError, TransientError, enqueue_after_commit
from tasks.maintenance import finalize_session, ping, purge_old_transcripts, reconcile_sessions
from tasks.provisioning import create_session, mint_participant_token, provision_session
from tasks.summaries import summarize_session
from tasks.transcripts import post_process_transcript
from tasks.usage import account_usage, record_usage
from tasks.webhooks import WebhookSignatureError, handle_livekit_webhook

celery: AvatarCelery = get_app()

__all__ = [
    "AvatarCelery",
    "ServiceError",
    "TransientError",
    "WebhookSignatureError",
    "account_usage",
    "app_for",
    "celery",
    "create_session",
    "enqueue_after_commit",
    "finalize_session",
    "get_app",
    "handle_livekit_webhook",
    "make_celery",
    "mint_participant_token",
    "ping",
    "post_process_transcript",
    "provision_session",
    "purge_old_transcripts",
    "reconcile_sessions",
    "record_usage",
    "summarize_session",
]
