"""One SQLAlchemy session per request, closed at teardown (the flaskr `get_db` pattern)."""

from __future__ import annotations

from flask import Flask, current_app, g
from sqlalchemy.orm import Session

from store.db import session_factory

from .settings import app_settings


def get_db() -> Session:
    """The request's database session; created on first use."""
    if "db" not in g:
        settings = app_settings(current_app)
        g.db = session_factory(settings.db.url, settings.db.echo)()
    db: Session = g.db
    return db


def close_db(_exc: BaseException | None = None) -> None:
    db: Session | None = g.pop("db", None)
    if db is not None:
        db.close()


def init_app(app: Flask) -> None:
    app.teardown_appcontext(close_db)
