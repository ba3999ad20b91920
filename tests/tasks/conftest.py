"""Fixtures for the back-office tests: one real Celery worker for the whole session.

The worker is a `celery -A tasks worker -Q live,batch` subprocess whose environment points at
the test Valkey, a test SQLite file and (through :class:`TcpProxy`, so a test can make LiveKit
unreachable) a real livekit-server that posts its webhooks to :class:`WebhookReceiver`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cli.services import (
    LiveKitServerConfig,
    start_livekit_server,
    stop_process,
)
from config.settings import Settings, load_settings
from tasks.app import AvatarCelery, make_celery
from tests.conftest import (
    TEST_API_KEY,
    TEST_API_SECRET,
    free_port,
    fresh_db_url,
    require_livekit_server,
    require_netns,
)
from tests.waiting import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WEBHOOK_ROOM_PREFIX = "wh-"
WEBHOOK_ROOM_FILTER = "wh"  # wh- (prefix rule), whm- (metadata rule), whx- (no rule)
T = TypeVar("T")


# --------------------------------------------------------------------------- TCP proxy


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target, which a test can take down and bring back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target: int | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._sock is not None

    def start(self) -> None:
        with self._lock:
            if self._sock is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(64)
            self._sock = sock
            self._thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Close the listener: new connections are refused (LiveKit "unreachable")."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if self._thread is not None:
            self._thread.join(5)

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                client, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.target is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pump, args=(upstream, client), daemon=True)
        t.start()
        pump(client, upstream)
        t.join(10)
        client.close()
        upstream.close()


# --------------------------------------------------------------------------- webhooks


@dataclass
class Delivery:
    event: str
    room: str
    body: str
    auth: str
    outcome: dict[str, Any] | None
    status: int


@dataclass
class WebhookReceiver:
    """Receives LiveKit's webhooks and hands them to `handler` (as the Flask route will)."""

    port: int
    deliveries: list[Delivery] = field(default_factory=list)
    handler: Callable[[str, str], dict[str, Any]] | None = None
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/livekit/webhook"

    def wait(self, match: Callable[[Delivery], bool], timeout: float = 30.0) -> Delivery:
        with self.cond:
            found = self.cond.wait_for(
                lambda: next((d for d in self.deliveries if match(d)), None), timeout
            )
        if not found:
            seen = [(d.event, d.room) for d in self.deliveries]
            raise AssertionError(f"no matching webhook within {timeout}s; got {seen}")
        return found


def _make_handler(receiver: WebhookReceiver) -> type[BaseHTTPRequestHandler]:
    import json

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            auth = self.headers.get("Authorization", "")
            try:
                meta = json.loads(body)
                event, room = meta.get("event", ""), (meta.get("room") or {}).get("name", "")
            except ValueError:
                event, room = "", ""
            outcome: dict[str, Any] | None = None
            status = 200
            # Only this suite's webhook rooms go to the handler: other tests' rooms finishing
            # must not change their sessions behind their back.
            if receiver.handler is not None and room.startswith(WEBHOOK_ROOM_FILTER):
                try:
                    outcome = receiver.handler(body, auth)
                except Exception as err:  # the Flask route maps these to 401/400/500
                    outcome, status = {"error": type(err).__name__}, 500
            self.send_response(status)
            self.end_headers()
            with receiver.cond:
                receiver.deliveries.append(Delivery(event, room, body, auth, outcome, status))
                receiver.cond.notify_all()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="session")
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver(port=free_port())
    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), _make_handler(receiver))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- servers


@pytest.fixture(scope="session")
def livekit_proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy()
    proxy.start()
    yield proxy
    proxy.stop()


@dataclass(frozen=True)
class WebhookLiveKit:
    url: str  # direct
    port: int
    api_key: str
    api_secret: str


@pytest.fixture(scope="session")
def webhook_livekit(
    tmp_path_factory: pytest.TempPathFactory,
    webhook_receiver: WebhookReceiver,
    livekit_proxy: TcpProxy,
) -> Iterator[WebhookLiveKit]:
    """A real livekit-server posting webhooks to the receiver (needs scripts/netns-run)."""
    require_livekit_server()
    require_netns()
    cfg = LiveKitServerConfig.on_free_ports(
        api_key=TEST_API_KEY, api_secret=TEST_API_SECRET, webhook_urls=[webhook_receiver.url]
    )
    port = cfg.port
    log = tmp_path_factory.mktemp("livekit-tasks") / "livekit.log"
    proc = start_livekit_server(cfg, log_path=log)
    livekit_proxy.target = port
    yield WebhookLiveKit(f"ws://127.0.0.1:{port}", port, TEST_API_KEY, TEST_API_SECRET)
    livekit_proxy.target = None
    stop_process(proc)


@pytest.fixture(scope="session")
def tasks_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One database (SQLite file or PostgreSQL) shared by the test process and the worker."""
    yield from fresh_db_url(request, tmp_path_factory.mktemp("tasks-db"))


def _settings(db_url: str, broker_url: str, livekit_url: str, var_dir: Path) -> Settings:
    return load_settings(
        db={"url": db_url},
        broker={"url": broker_url},
        livekit={
            "url": livekit_url,
            "api_key": TEST_API_KEY,
            "api_secret": TEST_API_SECRET,
            "webhook_rules_prefix": WEBHOOK_ROOM_PREFIX,
        },
        var_dir=var_dir,
        _env_file=None,
    )


@pytest.fixture(scope="session")
def task_settings(
    tasks_db_url: str,
    valkey_url: str,
    livekit_proxy: TcpProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Settings of the test process: same broker, database and LiveKit (via the proxy)."""
    return _settings(tasks_db_url, valkey_url, livekit_proxy.url, tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="session")
def sender(task_settings: Settings) -> AvatarCelery:
    """A Celery app bound to the test broker, used to send tasks and read results."""
    return make_celery(task_settings, set_as_current=False)


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("LIVEKIT_URL", "REDIS_URL", "DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    env.update(
        {
            "DB__URL": settings.db.url,
            "BROKER__URL": settings.broker.effective_url,
            "BROKER__VISIBILITY_TIMEOUT_SECONDS": str(settings.broker.visibility_timeout_seconds),
            "LIVEKIT__URL": settings.livekit.effective_url,
            "LIVEKIT__API_KEY": settings.livekit.api_key.get_secret_value(),
            "LIVEKIT__API_SECRET": settings.livekit.api_secret.get_secret_value(),
            "LIVEKIT__WEBHOOK_RULES_PREFIX": settings.livekit.webhook_rules_prefix,
            "VAR_DIR": str(settings.var_dir),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    log: Path
    queues: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(
    settings: Settings, *, queues: str, log: Path, name: str, concurrency: int = 2
) -> WorkerProcess:
    cmd = [
        sys.executable, "-m", "celery", "-A", "tasks", "worker",
        "-Q", queues, "-c", str(concurrency), "-P", "prefork", "-n", f"{name}@%h",
        "--loglevel=INFO", "--without-gossip", "--without-mingle",
    ]
    out = open(log, "ab")
    proc = subprocess.Popen(
        cmd, cwd=PROJECT_ROOT, env=worker_env(settings), stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return WorkerProcess(proc, log, queues)


def wait_worker_ready(app: AvatarCelery, worker: WorkerProcess, timeout: float = 60.0) -> None:
    def ready() -> bool:
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.log_text()[-3000:]}")
        return "ready." in worker.log_text()

    wait_for(ready, timeout=timeout, interval=0.1, what="the Celery worker to be ready")


@pytest.fixture(scope="session")
def celery_worker(
    sender: AvatarCelery, task_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """The real worker, consuming both queues (session scope: started once)."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    worker = start_worker(task_settings, queues="live,batch", log=log, name="test-worker")
    try:
        wait_worker_ready(sender, worker)
        yield worker
    finally:
        stop_process(worker.proc)
