"""A LiveKit cluster on one machine: two livekit-server nodes in multi-node mode on the shared
Valkey, the web process (API and webhooks), a Celery worker and two live workers, each worker
registered with a different node. Started from the same commands `avatar up --cluster` runs.
Web and Celery (and so the callers, who get the URL from the API) reach the nodes through one
URL, a failover proxy, as a deployment's load balancer: a killed node leaves them a live one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.services import LiveKitServerConfig, free_port, start_livekit_server, stop_process
from config.settings import Settings, load_settings
from store.db import session_scope, upgrade_db
from tests.conftest import TEST_API_KEY, TEST_API_SECRET, _spawn
from tests.e2e.failover import FailoverProxy
from tests.waiting import wait_for

# Per live worker: two concurrent sessions (the exact cap the tests check across workers).
CLUSTER_CAP = 2
WORKERS = ("live-a", "live-b")


@dataclass
class Cluster:
    node_urls: list[str]
    url: str  # the cluster's one URL (a failover proxy, as a load balancer): web and Celery
    redis_url: str  # the broker's database (Celery, rate limits)
    livekit_redis_url: str  # the nodes' shared state (room -> node map, agent dispatch)
    db_url: str
    web_url: str
    api_token: str
    var_dir: Path
    logs: dict[str, Path]
    node_cfgs: list[LiveKitServerConfig]
    node_procs: list[subprocess.Popen[bytes]]  # replaced when a node is restarted
    worker_procs: dict[str, subprocess.Popen[bytes]]  # replaced when a worker is restarted
    worker_envs: dict[str, dict[str, str]]

    @property
    def worker_pids(self) -> dict[str, int]:
        """Each live worker's main process (its own process group)."""
        return {name: proc.pid for name, proc in self.worker_procs.items()}

    def settings(self, node: int = 0) -> Settings:
        return load_settings(
            livekit={"url": self.node_urls[node], "api_key": TEST_API_KEY,
                     "api_secret": TEST_API_SECRET},
            broker={"url": self.redis_url},
            db={"url": self.db_url},
            var_dir=self.var_dir,
            _env_file=None,
        )

    def log_text(self, name: str) -> str:
        path = self.logs[name]
        return path.read_text(errors="replace") if path.exists() else ""

    def kill_node(self, node: int) -> None:
        """SIGKILL a livekit-server node: no leave, no webhook, its rooms' media gone."""
        proc = self.node_procs[node]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def kill_worker(self, name: str) -> None:
        """SIGKILL a live worker with its job processes (its own process group)."""
        proc = self.worker_procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def restart_node(self, node: int) -> None:
        """Start a killed node again on its ports (a test that kills one leaves the cluster
        whole for the next); the worker registered with it reconnects on its own."""
        if self.node_procs[node].poll() is None:
            return
        self.node_procs[node] = start_livekit_server(self.node_cfgs[node],
                                                     log_path=self.logs[f"node{node}"])

    def restart_worker(self, name: str) -> None:
        """Start a killed live worker again and wait until it has registered (a test that
        kills one leaves both for the next, whatever order the tests run in)."""
        if self.worker_procs[name].poll() is None:
            return
        registered = self.log_text(name).count("registered worker")
        proc = _spawn([sys.executable, "-m", "live.worker", "start"], self.worker_envs[name],
                      self.logs[name])
        self.worker_procs[name] = proc
        wait_for(lambda: self.log_text(name).count("registered worker") > registered, 240,
                 f"{name} to register again")


def _registered(text: str) -> bool:
    return "registered worker" in text


@pytest.fixture(scope="session")
def cluster(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes, web, Celery and two live workers (worker i registered with node i)."""
    if os.environ.get("AVATAR_NETNS") != "1":
        pytest.fail("the cluster runs only inside the private network namespace")
    var = tmp_path_factory.mktemp("cluster")
    base = valkey_url.rsplit("/", 1)[0]
    redis_url, lk_redis = f"{base}/12", f"{base}/13"
    db_url = f"sqlite:///{var / 'cluster.db'}"
    upgrade_db(db_url)
    web_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}"
    logs: dict[str, Path] = {}
    procs = []
    node_procs: list[subprocess.Popen[bytes]] = []
    node_cfgs: list[LiveKitServerConfig] = []
    worker_procs: dict[str, subprocess.Popen[bytes]] = {}
    worker_envs: dict[str, dict[str, str]] = {}
    proxy: FailoverProxy | None = None
    try:
        node_urls = []
        for i in range(2):
            cfg = LiveKitServerConfig.on_free_ports(
                api_key=TEST_API_KEY, api_secret=TEST_API_SECRET,
                webhook_urls=[f"{web_url}/webhooks/livekit"], redis_url=lk_redis)
            logs[f"node{i}"] = var / f"livekit{i}.log"
            node_procs.append(start_livekit_server(cfg, log_path=logs[f"node{i}"]))
            node_cfgs.append(cfg)
            node_urls.append(f"ws://127.0.0.1:{cfg.port}")
        proxy = FailoverProxy([("127.0.0.1", c.port) for c in node_cfgs])
        cluster_url = proxy.start()
        env = dict(os.environ)
        for k in list(env):
            if k.startswith(("LIVEKIT", "STT__", "LLM__", "TTS__", "AVATAR__", "LIMITS__", "WEB__")):
                env.pop(k)
        env.update(
            LIVEKIT_URL=cluster_url, LIVEKIT_API_KEY=TEST_API_KEY,
            LIVEKIT_API_SECRET=TEST_API_SECRET, REDIS_URL=redis_url, DATABASE_URL=db_url,
            VAR_DIR=str(var), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
            LIMITS__MAX_CONCURRENT_SESSIONS=str(CLUSTER_CAP), LIMITS__CALLER_GRACE_SECONDS="1",
            LIMITS__IDLE_TIMEOUT_SECONDS="90",
            # The face is not what a cluster test is about; it would only take the CPU.
            AVATAR__PROVIDER="none",
        )
        logs["web"] = var / "web.log"
        procs.append(_spawn(
            [sys.executable, "-m", "gunicorn", "web:create_app()", "--bind",
             f"127.0.0.1:{web_port}", "--workers", "1", "--threads", "4", "--timeout", "60"],
            env, logs["web"]))
        logs["celery"] = var / "celery.log"
        procs.append(_spawn(
            [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "live,batch",
             "--concurrency", "2", "--loglevel", "INFO", "-n", "cluster@%h"],
            env, logs["celery"]))
        for i, name in enumerate(WORKERS):
            logs[name] = var / f"{name}.log"
            worker_envs[name] = {**env, "LIVEKIT_URL": node_urls[i], "HOSTNAME": name,
                                 "LIVE_HEALTH_PORT": str(free_port())}
            worker_procs[name] = _spawn([sys.executable, "-m", "live.worker", "start"],
                                        worker_envs[name], logs[name])
        from web.auth import create_api_token

        with session_scope(db_url) as db:
            token = create_api_token(db, "cluster-tests")
        cl = Cluster(node_urls, cluster_url, redis_url, lk_redis, db_url, web_url, token, var, logs,
                     node_cfgs, node_procs, worker_procs, worker_envs)
        for name in (*WORKERS, "celery", "web"):
            ready = {"celery": "ready.", "web": "Booting worker"}.get(name)
            wait_for(lambda n=name, r=ready: (r in cl.log_text(n)) if r else _registered(
                cl.log_text(n)), 240, f"{name} to start")
        yield cl
    finally:
        for proc in reversed(procs):
            stop_process(proc, timeout=20)
        for proc in worker_procs.values():  # the dict a restart updated
            stop_process(proc, timeout=20)
        for proc in node_procs:  # the list a restart updated
            stop_process(proc, timeout=20)
        if proxy is not None:
            proxy.stop()
