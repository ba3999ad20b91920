"""`avatar up`: the Procfile's processes plus the embedded services, as one foreground command.

Each process runs in its own process group with its output prefixed; when one exits or on
Ctrl-C / SIGTERM, every group gets SIGTERM, then SIGKILL after a timeout, so nothing is left
behind.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from cli.services import (
    LiveKitServerConfig,
    ServiceError,
    livekit_server_command,
    livekit_server_env,
    port_open,
    stop_process,
    valkey_command,
    wait_for_port,
)
from config.settings import PROJECT_ROOT, Settings

COLORS = ["36", "33", "35", "32", "34", "31", "96", "93"]


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


def plan(settings: Settings, only: list[str] | None = None) -> list[ProcSpec]:
    env = local_env(settings)
    var = settings.var_dir
    procs: list[ProcSpec] = []
    if settings.broker.embedded:
        procs.append(
            ProcSpec("valkey", valkey_command(settings.broker.port, var / "valkey"), env, settings.broker.port)
        )
    if settings.livekit.embedded:
        cfg = LiveKitServerConfig(
            port=settings.livekit.port,
            rtc_tcp_port=settings.livekit.rtc_tcp_port,
            rtc_udp_port=settings.livekit.rtc_udp_port,
            api_key=settings.livekit.api_key.get_secret_value(),
            api_secret=settings.livekit.api_secret.get_secret_value(),
            node_ip=settings.livekit.node_ip,
            webhook_urls=[f"http://127.0.0.1:{settings.web.port}/webhooks/livekit"],
        )
        procs.append(
            ProcSpec("livekit", livekit_server_command(cfg), livekit_server_env(cfg, env),
                     settings.livekit.port)
        )
    for name, cmd in read_procfile().items():
        if name == "release":
            continue
        if only and name not in only:
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
        self._width = 8

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

    def start(self, specs: list[ProcSpec]) -> None:
        self._width = max(8, *(len(s.name) for s in specs))
        for i, spec in enumerate(specs):
            if spec.wait_port and port_open("127.0.0.1", spec.wait_port):
                raise ServiceError(f"{spec.name}: port {spec.wait_port} is already in use")
            args = ["bash", "-c", f"exec {spec.command}"] if isinstance(spec.command, str) else spec.command
            proc = subprocess.Popen(
                args,
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
                wait_for_port("127.0.0.1", spec.wait_port, 60, proc)

    def wait(self) -> str | None:
        """Block until a process exits or stop() is called; returns the exited name."""
        while not self._stop.is_set():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    self.exited = name
                    return name
            self._stop.wait(0.2)
        return None

    def stop(self) -> None:
        self._stop.set()
        # application processes first, then the services they depend on
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            stop_process(proc, timeout=15)


def command_line(spec: ProcSpec) -> str:
    return spec.command if isinstance(spec.command, str) else shlex.join(spec.command[:1])
