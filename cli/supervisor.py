"""`avatar up`: the Procfile's processes plus the embedded services, as one foreground command.

Each process runs in its own process group with its output prefixed; when one exits or on
Ctrl-C / SIGTERM, the application processes get SIGTERM, then the services they depend on, each
tier SIGKILLed after a short grace, so shutdown is bounded however loaded the machine is and
nothing is left behind. A second Ctrl-C kills everything at once.

The signal handler only records the request (`request_stop`): it runs in the main thread
between any two bytecodes, so it must take no lock and write nothing. Handlers that logged
from it could deadlock on the output lock that the interrupted main thread held, which left
`avatar up` hanging and its Valkey running after the caller gave up and killed it. Children
also get SIGKILL from the kernel if the supervisor itself dies (Linux parent-death signal).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

from cli.services import (
    LiveKitServerConfig,
    ServiceError,
    livekit_server_command,
    livekit_server_env,
    port_open,
    valkey_command,
)
from config.settings import PROJECT_ROOT, Settings

COLORS = ["36", "33", "35", "32", "34", "31", "96", "93"]
# The embedded servers the Procfile's processes depend on: stopped after them.
SERVICES = ("valkey", "livekit", "livekit2")
# `avatar up --cluster`: the second node's ports are the first node's plus this.
CLUSTER_PORT_OFFSET = 10
# The Valkey database holding LiveKit's cluster state (the broker uses its own).
CLUSTER_REDIS_DB = 3
# Grace after SIGTERM, per tier, before SIGKILL: Celery's warm shutdown, the live worker's
# sessions ending, gunicorn's workers; then Valkey writing its append-only file.
APP_GRACE_SECONDS = 10.0
SERVICE_GRACE_SECONDS = 5.0


def _die_with_parent(args: list[str]) -> list[str]:
    """Run `args` so the kernel SIGKILLs it when the supervisor dies, even by SIGKILL (Linux's
    parent-death signal, set by util-linux `setpriv`; elsewhere stop() alone applies)."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "KILL", "--", *args] if setpriv else args


@dataclass
class ProcSpec:
    name: str
    command: list[str] | str  # a string runs through bash, like a Procfile line
    env: dict[str, str]
    wait_port: int | None = None


def read_procfile(path: Path = PROJECT_ROOT / "Procfile") -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def local_env(settings: Settings) -> dict[str, str]:
    """Environment every local process shares: the embedded services' URLs, loopback binds."""
    env = dict(os.environ)
    # the Procfile's commands (gunicorn, celery) live next to this interpreter
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "LIVEKIT_URL": settings.livekit.effective_url,
            "LIVEKIT_API_KEY": settings.livekit.api_key.get_secret_value(),
            "LIVEKIT_API_SECRET": settings.livekit.api_secret.get_secret_value(),
            "REDIS_URL": settings.broker.effective_url,
            "DATABASE_URL": settings.db.url,
            "HOST": "127.0.0.1",
            "PORT": str(settings.web.port),
            "FLOWER_PORT": str(settings.web.flower_port),
            "FLOWER_BASIC_AUTH": (
                f"{settings.web.flower_user}:{settings.web.flower_password.get_secret_value()}"
            ),
            "PYTHONUNBUFFERED": "1",
            "HF_HUB_OFFLINE": "1",
        }
    )
    return env


def plan(settings: Settings, only: list[str] | None = None, *, cluster: bool = False) -> list[ProcSpec]:
    """The processes `avatar up` runs; with `cluster`, a LiveKit cluster on this machine:
    two embedded nodes in LiveKit's multi-node mode on the embedded Valkey, and a second
    live worker registered with the second node."""
    if cluster and not (settings.livekit.embedded and settings.broker.embedded):
        raise ServiceError(
            "--cluster runs two embedded LiveKit nodes on the embedded Valkey: unset "
            "LIVEKIT_URL and REDIS_URL (a LiveKit cluster of your own needs no --cluster)"
        )
    env = local_env(settings)
    var = settings.var_dir
    procs: list[ProcSpec] = []
    if settings.broker.embedded:
        procs.append(
            ProcSpec("valkey", valkey_command(settings.broker.port, var / "valkey"), env, settings.broker.port)
        )
    nodes: list[LiveKitServerConfig] = []
    if settings.livekit.embedded:
        cfg = LiveKitServerConfig(
            port=settings.livekit.port,
            rtc_tcp_port=settings.livekit.rtc_tcp_port,
            rtc_udp_port=settings.livekit.rtc_udp_port,
            api_key=settings.livekit.api_key.get_secret_value(),
            api_secret=settings.livekit.api_secret.get_secret_value(),
            node_ip=settings.livekit.node_ip,
            webhook_urls=[f"http://127.0.0.1:{settings.web.port}/webhooks/livekit"],
            redis_url=f"redis://127.0.0.1:{settings.broker.port}/{CLUSTER_REDIS_DB}"
            if cluster else None,
        )
        nodes.append(cfg)
        if cluster:
            off = CLUSTER_PORT_OFFSET
            nodes.append(replace(cfg, port=cfg.port + off, rtc_tcp_port=cfg.rtc_tcp_port + off,
                                 rtc_udp_port=cfg.rtc_udp_port + off))
        for name, node in zip(("livekit", "livekit2"), nodes, strict=False):
            procs.append(ProcSpec(name, livekit_server_command(node),
                                  livekit_server_env(node, env), node.port))
    for name, cmd in read_procfile().items():
        if name == "release":
            continue
        if only and name not in only:
            continue
        if name == "live" and cluster:
            # Worker i registers with node i; the nodes route jobs to each other's workers.
            health = int(env.get("LIVE_HEALTH_PORT", "8081"))
            for i, node in enumerate(nodes):
                procs.append(ProcSpec(f"live{i + 1}", cmd, {
                    **env, "LIVEKIT_URL": f"ws://127.0.0.1:{node.port}",
                    "HOSTNAME": f"{env.get('HOSTNAME') or 'live'}-{i + 1}",
                    "LIVE_HEALTH_PORT": str(health + i)}))
            continue
        procs.append(ProcSpec(name, cmd, env))
    return procs


class Supervisor:
    def __init__(self, out: IO[str] | None = None) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._out = out or sys.stdout
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.exited: str | None = None
        self.stop_signal: int | None = None
        self._width = 8
        self._stopped = False

    def _pump(self, name: str, color: str, stream: IO[bytes]) -> None:
        prefix = f"\x1b[{color}m{name:<{self._width}}|\x1b[0m " if self._out.isatty() else f"{name:<{self._width}}| "
        for raw in iter(stream.readline, b""):
            with self._lock:
                self._out.write(prefix + raw.decode(errors="replace").rstrip() + "\n")
                self._out.flush()
        stream.close()

    def log(self, msg: str) -> None:
        with self._lock:
            self._out.write(f"{'avatar':<{self._width}}| {msg}\n")
            self._out.flush()

    def request_stop(self, signum: int) -> None:
        """Signal-handler safe: no lock, no output. A second request kills every group now."""
        if self._stop.is_set() and self.stop_signal is not None:
            self._kill_all(signal.SIGKILL)
            return
        self.stop_signal = signum
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self, specs: list[ProcSpec]) -> None:
        self._width = max(8, *(len(s.name) for s in specs))
        for i, spec in enumerate(specs):
            if self._stop.is_set():
                return
            if spec.wait_port and port_open("127.0.0.1", spec.wait_port):
                raise ServiceError(f"{spec.name}: port {spec.wait_port} is already in use")
            args = ["bash", "-c", f"exec {spec.command}"] if isinstance(spec.command, str) else spec.command
            proc = subprocess.Popen(
                _die_with_parent(args),
                env=spec.env,
                cwd=PROJECT_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.procs[spec.name] = proc
            assert proc.stdout is not None
            threading.Thread(
                target=self._pump, args=(spec.name, COLORS[i % len(COLORS)], proc.stdout), daemon=True
            ).start()
            if spec.wait_port:
                self._wait_port(spec.name, spec.wait_port, proc, 60.0)

    def _wait_port(self, name: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Like cli.services.wait_for_port, but a stop request ends the wait."""
        deadline = time.monotonic() + timeout
        while not port_open("127.0.0.1", port):
            if proc.poll() is not None:
                raise ServiceError(f"{name} exited with code {proc.returncode} before listening")
            if time.monotonic() > deadline:
                raise ServiceError(f"{name} did not listen on port {port} within {timeout:.0f}s")
            if self._stop.wait(0.1):  # polling interval, ended early by a stop request
                return

    def wait(self) -> str | None:
        """Block until a process exits or a stop is requested; returns the exited name."""
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.exited = name
                    return name
            self._stop.wait(0.2)
        return None

    def _kill_all(self, sig: int) -> None:
        for proc in list(self.procs.values()):
            _signal_group(proc, sig)

    def stop(
        self,
        app_grace: float = APP_GRACE_SECONDS,
        service_grace: float = SERVICE_GRACE_SECONDS,
    ) -> None:
        """Stop every process within about app_grace + service_grace seconds.

        Applications first (they flush to the services on their way out), then the services;
        each tier gets one SIGTERM and, after its grace, SIGKILL for the whole process group
        (so a worker's children go too). Safe to call twice.
        """
        self._stop.set()
        if self._stopped:
            return
        apps = [p for n, p in self.procs.items() if n not in SERVICES]
        services = [p for n, p in reversed(list(self.procs.items())) if n in SERVICES]
        for tier, grace in ((apps, app_grace), (services, service_grace)):
            for proc in tier:
                if proc.poll() is None:
                    _signal_group(proc, signal.SIGTERM)
            _wait_all(tier, grace)
            for proc in tier:
                _signal_group(proc, signal.SIGKILL)  # whatever is left of the group, if any
            _wait_all(tier, 5.0)
        self._stopped = True


def install_stop_handlers(sup: Supervisor) -> None:
    """Ctrl-C and SIGTERM request a stop (the main thread carries it out); again, kill."""

    def _handler(signum: int, _frame: object) -> None:
        sup.request_stop(signum)  # only a flag and, the second time, kill(): see the docstring

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def command_line(spec: ProcSpec) -> str:
    return spec.command if isinstance(spec.command, str) else shlex.join(spec.command[:1])
