"""`avatar up --cluster`: two LiveKit nodes sharing the embedded Valkey, a live worker per node."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cli.services import ServiceError
from cli.supervisor import plan
from config.settings import load_settings

pytestmark = pytest.mark.unit


def test_cluster_plan_has_two_nodes_on_one_valkey_and_a_worker_per_node(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path, _env_file=None)
    specs = {s.name: s for s in plan(settings, cluster=True)}
    assert {"valkey", "livekit", "livekit2", "live1", "live2"} <= set(specs)
    assert "live" not in specs
    nodes = [yaml.safe_load(specs[n].env["LIVEKIT_CONFIG"]) for n in ("livekit", "livekit2")]
    assert nodes[0]["redis"] == nodes[1]["redis"]
    assert nodes[0]["redis"]["address"] == f"127.0.0.1:{settings.broker.port}"
    ports = [(n["port"], n["rtc"]["tcp_port"], n["rtc"]["udp_port"]) for n in nodes]
    assert not set(ports[0]) & set(ports[1])  # each node its own ports
    assert all(n["bind_addresses"][0] == "127.0.0.1" for n in nodes)
    workers = [specs["live1"].env, specs["live2"].env]
    assert [w["LIVEKIT_URL"] for w in workers] == [f"ws://127.0.0.1:{p[0]}" for p in ports]
    assert workers[0]["HOSTNAME"] != workers[1]["HOSTNAME"]
    assert workers[0]["LIVE_HEALTH_PORT"] != workers[1]["LIVE_HEALTH_PORT"]
    # without --cluster, one node, no Redis in its configuration
    single = {s.name: s for s in plan(settings)}
    assert "livekit2" not in single and "live" in single
    assert "redis" not in yaml.safe_load(single["livekit"].env["LIVEKIT_CONFIG"])


def test_cluster_needs_the_embedded_servers(tmp_path: Path) -> None:
    settings = load_settings(var_dir=tmp_path, livekit={"url": "ws://127.0.0.1:17880"},
                             _env_file=None)
    with pytest.raises(ServiceError, match="unset LIVEKIT_URL"):
        plan(settings, cluster=True)
