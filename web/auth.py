"""Operators (admin users with hashed passwords) and API bearer tokens.

`create_admin` is what `avatar admin create` calls; `create_api_token` returns the token
once and stores only its sha256, so a database leak does not leak usable tokens.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash
from werkzeug.wrappers import Response

from config.settings import Settings
from store.db import session_scope
from store.models import AdminUser, ApiToken, utcnow

from .db import get_db

logger = logging.getLogger(__name__)

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "ava_"

F = TypeVar("F", bound=Callable[..., Any])

bp = Blueprint("auth", __name__)


class AuthError(ValueError):
    """Bad input for an admin or token (the message is safe to show)."""


def _normalize_email(email: str) -> str:
    email = email.strip().lower()
    if not EMAIL_RE.match(email) or len(email) > 255:
        raise AuthError("enter a valid email address")
    return email


def create_admin(db: Session, email: str, password: str) -> AdminUser:
    """Add an operator; the caller commits.

    Raises:
        AuthError: invalid email, password shorter than 8 characters, or email taken.
    """
    email = _normalize_email(email)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AuthError(f"password must be at least {MIN_PASSWORD_LENGTH} characters")
    if db.scalar(select(AdminUser).where(AdminUser.email == email)) is not None:
        raise AuthError(f"an admin with email {email} already exists")
    user = AdminUser(email=email, password_hash=generate_password_hash(password))
    db.add(user)
    db.flush()
    logger.info("admin created", extra={"admin_id": user.id})
    return user


def authenticate_admin(db: Session, email: str, password: str) -> AdminUser | None:
    """The admin if the password matches; a dummy hash check keeps timing alike otherwise."""
    try:
        email = _normalize_email(email)
    except AuthError:
        return None
    user = db.scalar(select(AdminUser).where(AdminUser.email == email))
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    if not check_password_hash(user.password_hash, password):
        return None
    return user


_DUMMY_HASH = generate_password_hash(secrets.token_hex(8))


def bootstrap_admin(settings: Settings) -> bool:
    """Create settings.web.admin_email if no admin exists yet; True if one was created.

    Safe at every start-up: it does nothing once any admin exists, and a database that is
    not migrated yet only logs a warning (the release step migrates it).
    """
    email, password = settings.web.admin_email, settings.web.admin_password
    if not email or password is None:
        return False
    try:
        with session_scope(settings.db.url) as db:
            if db.scalar(select(func.count()).select_from(AdminUser)):
                return False
            create_admin(db, email, password.get_secret_value())
            return True
    except (OperationalError, ProgrammingError):
        logger.warning("admin bootstrap skipped: database not migrated (run `avatar db upgrade`)")
        return False
    except AuthError as err:
        logger.error("admin bootstrap failed: %s", err)
        return False


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


SCOPES = ("sessions:read", "sessions:write")
MAX_TOKEN_DAYS = 3650


def create_api_token(
    db: Session,
    name: str,
    *,
    expires_in_days: float | None = None,
    scopes: Sequence[str] = SCOPES,
) -> str:
    """Create an API token and return it; only its hash is stored. The caller commits.

    Raises:
        AuthError: bad name, lifetime or scope (the message names it).
    """
    name = name.strip()
    if not name or len(name) > 64:
        raise AuthError("token name must be 1 to 64 characters")
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise AuthError(f"scopes must be some of: {', '.join(SCOPES)} (got {', '.join(unknown) or 'none'})")
    expires_at = None
    if expires_in_days is not None:
        if not 0 < expires_in_days <= MAX_TOKEN_DAYS:
            raise AuthError(f"expiry must be between 0 and {MAX_TOKEN_DAYS} days")
        expires_at = utcnow() + timedelta(days=expires_in_days)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.add(
        ApiToken(
            name=name, token_hash=hash_token(token), prefix=token[:12], expires_at=expires_at,
            scopes=" ".join(s for s in SCOPES if s in scopes),
        )
    )
    db.flush()
    return token


def revoke_api_token(db: Session, ident: str) -> ApiToken:
    """Revoke a token by id, name or printed prefix; the caller commits.

    Raises:
        AuthError: no token, or more than one, matches.
    """
    rows = list(
        db.scalars(
            select(ApiToken).where(
                (ApiToken.prefix == ident[:12]) if ident.startswith(TOKEN_PREFIX)
                else (ApiToken.name == ident) | (ApiToken.id == (int(ident) if ident.isdigit() else -1))
            )
        )
    )
    if len(rows) != 1:
        raise AuthError(f"{'no' if not rows else 'more than one'} token matches {ident!r}")
    row = rows[0]
    if not row.revoked:
        row.revoked, row.revoked_at = True, utcnow()
    return row


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def verify_api_token(db: Session, token: str) -> ApiToken | None:
    """The live (not revoked, not expired) row for a bearer token, `last_used_at` updated."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    row = db.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked.is_(False))
    )
    if row is None or (row.expires_at is not None and _aware(row.expires_at) <= utcnow()):
        return None
    row.last_used_at = utcnow()
    db.commit()
    return row


def current_admin() -> AdminUser | None:
    """The logged-in operator of this request, if any (cached on `g`)."""
    if "admin" not in g:
        admin_id = session.get("admin_id")
        g.admin = get_db().get(AdminUser, admin_id) if admin_id is not None else None
    return cast(AdminUser | None, g.admin)


def login_required(view: F) -> F:
    """Redirect to the login page unless an operator is logged in."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if current_admin() is None:
            return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return cast(F, wrapped)


def login_account_key() -> str:
    """The rate-limit key of a sign-in attempt's account, so one account cannot be guessed
    at from many addresses; malformed emails share one bucket."""
    try:
        email = _normalize_email(request.form.get("email", ""))
    except AuthError:
        email = "-"
    return "login-account:" + hashlib.sha256(email.encode()).hexdigest()[:32]


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths, so `next` cannot redirect off-site."""
    if not target:
        return url_for("admin.dashboard")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("admin.dashboard")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int]:
    """Log in; POSTs are rate limited per client address (see `create_app`)."""
    if request.method == "POST":
        email = request.form.get("email", "")
        password = request.form.get("password", "")
        db = get_db()
        user = authenticate_admin(db, email, password)
        if user is None:
            logger.info("login failed", extra={"remote_addr": request.remote_addr})
            return render_template("login.html", error="Invalid email or password.", email=email), 401
        user.last_login_at = utcnow()
        db.commit()
        session.clear()
        session["admin_id"] = user.id
        session.permanent = True
        return redirect(_safe_next(request.args.get("next")))
    return render_template("login.html", error=None, email="")


@bp.route("/logout", methods=["POST"])
def logout() -> Response:
    session.clear()
    flash("You are signed out.", "info")
    return redirect(url_for("auth.login"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _inject_admin() -> dict[str, Any]:
        return {"current_admin": current_admin}
