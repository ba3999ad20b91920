"""A throwaway PostgreSQL server for the tests, from Debian's `postgresql` package.

Started the way the fixtures start Valkey: a temporary data directory, a free port on
127.0.0.1, stopped (and deleted) at the end of the session. `initdb` and `postgres` refuse to
run as root, and CI runs as root: the server then runs as the package's `postgres` user (or
`nobody`); as root inside a user namespace (`scripts/netns-run` started by an ordinary user)
it runs in a nested namespace as an ordinary uid. Each test gets a database of its own,
copied from a template that is migrated once (`CREATE DATABASE ... TEMPLATE`).
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cli.services import free_port, stop_process

TEMPLATE = "avatar_template"
USER = "avatar"
# Durability is of no use to a database deleted after the run; speed is.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "log_min_messages": "warning",
    "log_min_error_statement": "panic",  # expected conflicts (races under test) are not news
}


def find_bindir() -> Path | None:
    """Where initdb and postgres are: $PG_BINDIR, the PATH, or Debian's newest version."""
    if env := os.environ.get("PG_BINDIR"):
        return Path(env) if (Path(env) / "initdb").exists() else None
    if found := shutil.which("initdb"):
        return Path(found).parent
    candidates = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")]

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    return max(candidates, key=version) if candidates else None


def _real_root() -> bool:
    """Root of the machine, as opposed to root mapped from an ordinary user in a namespace."""
    try:
        return Path("/proc/self/uid_map").read_text().split()[:3] == ["0", "0", "4294967295"]
    except OSError:
        return True


@dataclass
class _Runner:
    """How to run the server's commands as an unprivileged user."""

    prefix: list[str]
    uid: int | None = None  # chown the data directory to this uid/gid first
    gid: int | None = None


def _runner() -> _Runner:
    if os.geteuid() != 0:
        return _Runner([])
    if _real_root():
        for name in ("postgres", "nobody"):
            try:
                pw = pwd.getpwnam(name)
            except KeyError:
                continue
            return _Runner(
                ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
                 "--"],
                pw.pw_uid, pw.pw_gid,
            )
        raise RuntimeError("PostgreSQL refuses to run as root and there is no 'postgres' or "
                           "'nobody' user to run it as")
    # uid 0 only inside a user namespace: one more namespace makes us an ordinary uid there
    return _Runner(["unshare", "--user", "--map-user=1000", "--map-group=1000", "--"])


def _reachable_tmp(runner: _Runner) -> str | None:
    """$TMPDIR if every directory above it lets others through, else /tmp."""
    if runner.uid is None:
        return None
    path = Path(tempfile.gettempdir()).resolve()
    if all(p.stat().st_mode & 0o001 for p in (path, *path.parents)):
        return None
    return "/tmp"


@dataclass
class PostgresServer:
    """One running server; `create_database` hands out fresh, migrated databases."""

    port: int
    password: str
    root: Path
    log: Path
    proc: subprocess.Popen[bytes]
    command: list[str] = field(default_factory=list)  # how it was started, to start it again
    created: list[str] = field(default_factory=list)

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def _admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            host="127.0.0.1", port=self.port, user=USER, password=self.password,
            dbname="postgres", autocommit=True, connect_timeout=5,
        )

    @classmethod
    def start(cls, log_dir: Path, timeout: float = 60.0) -> PostgresServer:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package `postgresql`): "
                               "run `make setup`")
        runner = _runner()
        # not under pytest's basetemp (0700): the server's user must reach its directory
        root = Path(tempfile.mkdtemp(prefix="avatar-pg-", dir=_reachable_tmp(runner)))
        data, pwfile = root / "data", root / "pw"
        password = secrets.token_hex(16)
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        data.mkdir(mode=0o700)
        if runner.uid is not None and runner.gid is not None:
            for p in (root, data, pwfile):
                os.chown(p, runner.uid, runner.gid)
        log = log_dir / "postgres.log"
        with open(log, "ab") as out:
            done = subprocess.run(
                [*runner.prefix, str(bindir / "initdb"), "-D", str(data), "-U", USER,
                 "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C",
                 "--no-sync"],
                stdout=out, stderr=subprocess.STDOUT, check=False,
            )
        pwfile.unlink()
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"initdb failed ({done.returncode}); see {log}")
        port = free_port()
        opts = [f"-c{k}={v}" for k, v in {**SERVER_SETTINGS,
                                          "unix_socket_directories": str(root)}.items()]
        command = [*runner.prefix, str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                   *opts]
        server = cls(port, password, root, log, cls._spawn(command, log), command)
        try:
            server._wait_ready(timeout)
            server._make_template()
        except BaseException:
            server.stop()
            raise
        return server

    @staticmethod
    def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def shut_down(self) -> None:
        """Stop the server as an operator would (fast shutdown), keeping its data."""
        os.killpg(self.proc.pid, signal.SIGINT)
        self.proc.wait(30)

    def start_again(self, timeout: float = 60.0) -> None:
        """Start it again after `shut_down`, on the same port and data."""
        assert self.proc.poll() is not None, "the server is still running"
        self.proc = self._spawn(self.command, self.log)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n"
                                   + self.log.read_text(errors="replace")[-3000:])
            try:
                self._admin().close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not accept connections within "
                                       f"{timeout:.0f}s; see {self.log}") from None
                time.sleep(0.1)  # polling a server start-up with a deadline

    def _make_template(self) -> None:
        from store.db import upgrade_db

        with self._admin() as conn:
            conn.execute(f"CREATE DATABASE {TEMPLATE}")
        upgrade_db(self.url(TEMPLATE))  # Alembic, as `avatar up` runs it; no pooled connection

    def create_database(self, *, migrated: bool = True) -> str:
        """A new database, at the newest migration unless `migrated` is false; its URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        template = TEMPLATE if migrated else "template0"
        with self._admin() as conn:
            conn.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        self.created.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made here, closing this process's pooled connections to it."""
        from store.db import get_engine

        get_engine(url).dispose()
        name = url.rsplit("/", 1)[1]
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if name in self.created:
            self.created.remove(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT: connections are cut, not waited for), then delete it all."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGINT)
                self.proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)
