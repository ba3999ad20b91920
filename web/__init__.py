"""The web process: admin UI (HTML), JSON API, LiveKit webhooks.

`gunicorn "web:create_app()"` builds one app per worker from the process settings. Views
validate, call one function of :class:`web.backend.Backend`, enqueue, and return.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import redis
import sqlalchemy.exc
from flask import Flask, Response, jsonify, render_template, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from config.logging import install_secret_mask
from config.settings import Settings, get_settings, is_local_only

from . import admin, api, auth, db, webhooks
from .backend import Backend, QueueUnavailable

logger = logging.getLogger(__name__)

__all__ = ["create_app"]

DEFAULT_RATELIMIT_STORAGE = "memory://"


def create_app(
    settings: Settings | None = None,
    *,
    backend: Backend | None = None,
    ratelimit_storage_uri: str | None = None,
    bootstrap: bool = True,
) -> Flask:
    """Build the app.

    Args:
        settings: the process settings (default: `get_settings()`).
        backend: the back-office calls (default: Celery tasks and the LiveKit API).
        ratelimit_storage_uri: where login attempts and session quotas are counted.
            Default: the configured broker (redis://), shared by every gunicorn worker and
            host; ``memory://`` (per process) only when no broker URL is configured (tests,
            a lone process). The store must be reachable: there is no silent fallback.
        bootstrap: create the admin from settings.web.admin_email if no admin exists.
    """
    settings = settings or get_settings()
    install_secret_mask(settings.secret_values())  # gunicorn configures its own handlers
    app = Flask(__name__)
    if settings.web.trusted_proxies:
        # behind N proxies the client's address is the Nth from the right of X-Forwarded-For
        n = settings.web.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    app.config.update(
        SECRET_KEY=settings.web.secret_key.get_secret_value(),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=secure_cookies(settings),
        SESSION_COOKIE_NAME="avatar_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead of a clock
        MAX_CONTENT_LENGTH=1024 * 1024,
        JSON_SORT_KEYS=False,
    )
    app.extensions["settings"] = settings
    app.extensions["backend"] = backend or Backend()

    csrf = CSRFProtect(app)
    limiter = Limiter(
        get_remote_address,
        app=app,
        storage_uri=ratelimit_storage_uri or _limit_store(settings),
        default_limits=[],
        headers_enabled=True,
        key_prefix="avatar-web",
    )
    app.extensions["avatar_limiter"] = limiter

    db.init_app(app)
    auth.init_app(app)
    admin.init_app(app)
    api.init_app(app)
    webhooks.init_app(app)

    csrf.exempt(api.bp)
    csrf.exempt(api.alias_bp)
    csrf.exempt(webhooks.bp)

    throttled = "Too many sign-in attempts. Wait a minute and try again."
    login_view: Any = app.view_functions["auth.login"]
    for key_func in (get_remote_address, auth.login_account_key):  # per address, per account
        login_view = limiter.limit(
            settings.web.login_rate_limit,
            key_func=key_func,
            methods=["POST"],
            error_message=throttled,
        )(login_view)
    app.view_functions["auth.login"] = login_view

    _register_error_pages(app)
    _register_security_headers(app, settings)

    if bootstrap and auth.bootstrap_admin(settings):
        logger.info("bootstrap admin created from settings.web.admin_email")
    return app


def _limit_store(settings: Settings) -> str:
    """The broker as the `limits` library spells it (a Unix socket is `redis+unix://`)."""
    url = settings.broker.url or DEFAULT_RATELIMIT_STORAGE
    return "redis+" + url if url.startswith("unix://") else url


def secure_cookies(settings: Settings) -> bool:
    """Secure cookies (and HSTS) unless configured off or the whole stack is on loopback."""
    if settings.web.secure_cookies is not None:
        return settings.web.secure_cookies
    return not is_local_only(settings)


def _register_security_headers(app: Flask, settings: Settings) -> None:
    """Defence in depth: no inline scripts anywhere, so a CSP can forbid them."""
    lk = settings.livekit.browser_url
    lk_http = "http" + lk[2:] if lk.startswith("ws") else lk
    csp = "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self' 'unsafe-inline'",  # width/colour attributes of the charts
            "img-src 'self' data:",
            "media-src 'self' blob: mediastream:",
            f"connect-src 'self' {lk} {lk_http}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ]
    )

    hsts = secure_cookies(settings)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if request.endpoint != "static":
            response.headers.setdefault("Cache-Control", "no-store")
        if hsts:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


def _wants_json() -> bool:
    return request.path.startswith(("/api/", "/webhooks/")) or request.path.endswith(".json")


def _register_error_pages(app: Flask) -> None:
    def page(status: int, title: str, message: str) -> tuple[str | Response, int]:
        if _wants_json():
            code = {
                404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
                429: "rate_limited",
            }.get(status, "error")
            return jsonify({"error": {"code": code, "message": message, "fields": {}}}), status
        return render_template("error.html", status=status, title=title, message=message), status

    @app.errorhandler(404)
    def _not_found(_e: Any) -> tuple[str | Response, int]:
        return page(404, "Not found", "There is nothing at this address.")

    @app.errorhandler(405)
    def _method(_e: Any) -> tuple[str | Response, int]:
        return page(405, "Method not allowed", "This address does not accept that method.")

    @app.errorhandler(413)
    def _too_large(_e: Any) -> tuple[str | Response, int]:
        limit = app.config["MAX_CONTENT_LENGTH"] // 1024
        return page(413, "Too large", f"The request body is over {limit} KiB.")

    @app.errorhandler(429)
    def _rate_limited(e: Any) -> tuple[str | Response, int]:
        message = getattr(e, "description", None) or "Too many requests."
        if request.endpoint == "auth.login":
            return render_template("login.html", error=message, email=""), 429
        return page(429, "Slow down", str(message))

    @app.errorhandler(CSRFError)
    def _csrf(e: CSRFError) -> tuple[str | Response, int]:
        return page(400, "Form expired", "The form expired or was not sent from this site. "
                    "Go back, reload the page and try again.")

    def unavailable(code: str, message: str) -> tuple[str | Response, int]:
        """A dependency is down: 503 with Retry-After, the client may try again shortly."""
        if _wants_json():
            body = {"error": {"code": code, "message": message, "fields": {}}}
            resp = jsonify(body)
        else:
            resp = Response(
                render_template("error.html", status=503, title="Temporarily unavailable",
                                message=message)
            )
        resp.status_code = 503
        resp.headers["Retry-After"] = "5"
        return resp, 503

    @app.errorhandler(QueueUnavailable)
    def _queue_down(_e: QueueUnavailable) -> tuple[str | Response, int]:
        return unavailable(
            "broker_unavailable",
            "The task queue is unreachable, so the session was not created. Try again shortly.",
        )

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _limits_store_down(_e: Exception) -> tuple[str | Response, int]:
        # rate limits, quotas and the per-room guard count in the broker: no broker, no start
        return unavailable(
            "broker_unavailable",
            "The task queue is unreachable, so the session was not created. Try again shortly.",
        )

    @app.errorhandler(sqlalchemy.exc.OperationalError)
    def _db_down(e: sqlalchemy.exc.OperationalError) -> tuple[str | Response, int]:
        app.logger.warning("database unavailable: %s", type(e.orig).__name__)
        return unavailable(
            "database_unavailable",
            "The database is unavailable (locked or unreachable). Try again shortly.",
        )

    @app.errorhandler(500)
    def _server_error(_e: Any) -> tuple[str | Response, int]:
        return page(500, "Something went wrong", "The error was logged.")
