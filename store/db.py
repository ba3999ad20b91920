"""Engine, sessions and migrations.

SQLite by default (WAL, busy timeout: web, Celery and live workers write at once),
PostgreSQL in deployment. The schema is owned by Alembic (`store/migrations`).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# How long a SQLite write waits for another writer's lock before it fails (read per connection).
SQLITE_BUSY_TIMEOUT_SECONDS = 10.0


def _use_wal(cur: Any) -> None:
    """Put the file in WAL mode (it stays so: later connections only see that it is).

    Leaving a rollback journal for WAL needs the file to itself, and SQLite refuses at once,
    without waiting out the busy timeout, when connections opened at the same moment are
    switching it too (each holds a read lock the other's switch waits on). The switch is
    tried again until the busy timeout has passed.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    delay = 0.002
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)  # a retry backoff, not a wait on an event: SQLite gives none
        delay = min(delay * 2, 0.05)


def prepare_sqlite_connection(dbapi_conn: Any, _record: Any = None) -> None:
    """What every new SQLite connection of the engine runs first (its ``connect`` event)."""
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={round(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
    _use_wal(cur)
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def get_engine(url: str, echo: bool = False) -> Engine:
    """One engine per URL per process (`get_engine(url)` and `get_engine(url, False)` alike:
    lru_cache alone keys those two calls apart)."""
    return _engine(url, echo)


@lru_cache(maxsize=8)
def _engine(url: str, echo: bool) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS})
        event.listen(engine, "connect", prepare_sqlite_connection)
    else:
        engine = create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5)
    return engine


@lru_cache(maxsize=8)
def _factory(url: str, echo: bool) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, echo), expire_on_commit=False)


def session_factory(url: str, echo: bool = False) -> sessionmaker[Session]:
    return _factory(url, echo)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A transaction: committed on success, rolled back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_db(url: str) -> None:
    """Bring the schema to the newest migration (safe to run at every start).

    A SQLite file is put in WAL mode first, on one connection: Alembic's own engine would
    leave a new file on a rollback journal, and the web, Celery and live workers' first
    connections would then all switch it at once.
    """
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)
            try:
                _use_wal(conn.cursor())
            finally:
                conn.close()
    command.upgrade(alembic_config(url), "head")
