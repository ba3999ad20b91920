"""SQLite as the web, Celery and live workers share it: WAL mode, from the first connections on."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from store.db import SQLITE_BUSY_TIMEOUT_SECONDS, prepare_sqlite_connection, upgrade_db

pytestmark = pytest.mark.unit


def journal_mode(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_a_new_database_is_in_wal_mode_once_migrated(tmp_path: Path) -> None:
    """Alembic's own engine leaves a new file on a rollback journal; upgrade_db does not."""
    path = tmp_path / "new" / "app.db"
    upgrade_db(f"sqlite:///{path}")
    assert journal_mode(path) == "wal"


def test_connections_opened_at_once_on_a_rollback_journal_file_all_work(tmp_path: Path) -> None:
    """A file made elsewhere (an older release, a copy, the sqlite3 shell) is switched to WAL
    by whichever connections come first. SQLite refuses the switch at once, without its busy
    wait, to a connection racing another one that switches it: here, about one round in
    thirty failed that way (and a CI run, on the test database). Every connection must work."""
    threads, rounds = 8, 150
    failures: list[str] = []
    for r in range(rounds):
        path = tmp_path / f"r{r}.db"
        seed = sqlite3.connect(path)
        seed.execute("CREATE TABLE t (x INTEGER)")
        seed.commit()
        seed.close()
        assert journal_mode(path) == "delete"
        gate = threading.Barrier(threads, timeout=30)

        def work(i: int, path_: Path = path, gate_: threading.Barrier = gate, r_: int = r) -> None:
            gate_.wait()
            try:
                # what the engine does for each new connection
                conn = sqlite3.connect(path_, timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
                                       check_same_thread=False)
                try:
                    prepare_sqlite_connection(conn)
                    conn.execute("INSERT INTO t VALUES (?)", (i,))
                    conn.commit()
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                failures.append(f"round {r_}: {exc!r}")

        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert not failures, failures[:3]
        assert journal_mode(path) == "wal"
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == threads
        conn.close()
