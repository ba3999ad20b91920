"""`POST /webhooks/livekit`: LiveKit's room and participant events.

The body and its JWT signature go untouched to `tasks.webhooks.handle_livekit_webhook`,
which verifies them, records the event id (LiveKit retries) and enqueues the work.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, jsonify, request

from .backend import WebhookInvalid, WebhookRejected
from .settings import app_settings, backend

logger = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")


@bp.post("/livekit")
def livekit() -> tuple[Response, int]:
    """:raise 401: missing or bad signature."""
    auth_header = request.headers.get("Authorization", "")
    if not auth_header:
        return _error(401, "unauthorized", "missing Authorization header")
    body = request.get_data(as_text=True)
    try:
        outcome = backend().handle_webhook(app_settings(), body, auth_header)
    except WebhookRejected:
        logger.warning("webhook rejected", extra={"remote_addr": request.remote_addr})
        return _error(401, "unauthorized", "webhook signature did not verify")
    except WebhookInvalid as err:
        return _error(400, "invalid_event", str(err))
    return jsonify({"ok": True, **outcome}), 200


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "fields": {}}}), status


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
