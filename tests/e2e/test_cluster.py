"""Sessions on a LiveKit cluster: two nodes in multi-node mode, two live workers.

Launched through the API (web -> Celery provisioning -> LiveKit dispatch), sessions land on
both nodes and both workers, and no worker ever runs more than its cap.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections import Counter
from typing import Any

import pytest
import redis
from livekit import api
from sqlalchemy import select

from store.db import session_scope
from store.models import AgentSessionRecord
from tests.e2e.conftest import CLUSTER_CAP, WORKERS, Cluster
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def launch(cluster: Cluster, **body: Any) -> dict[str, Any]:
    """POST /api/v1/sessions, as an API client does."""
    req = urllib.request.Request(
        f"{cluster.web_url}/api/v1/sessions", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {cluster.api_token}",
                 "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as res:
        assert res.status == 201
        data: dict[str, Any] = json.loads(res.read())
        return data


def record(cluster: Cluster, sid: str) -> AgentSessionRecord:
    with session_scope(cluster.db_url) as db:
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None
        db.expunge(rec)
        return rec


def worker_of(rec: AgentSessionRecord) -> str:
    """The live worker running a session (its HOSTNAME is the first part of worker_id)."""
    return (rec.worker_id or "").split(":", 1)[0]


def running_per_worker(cluster: Cluster) -> Counter[str]:
    with session_scope(cluster.db_url) as db:
        rows = db.scalars(select(AgentSessionRecord).where(
            AgentSessionRecord.status == "active")).all()
        return Counter(worker_of(r) for r in rows)


def node_records(cluster: Cluster) -> dict[bytes, bytes]:
    """LiveKit's record of each node in the shared Valkey (its stats, rooms counted, are
    rewritten every few seconds): what its node selector reads to place a new room."""
    client = redis.Redis.from_url(cluster.livekit_redis_url)
    try:
        return dict(client.hgetall("nodes"))
    finally:
        client.close()


def room_nodes(cluster: Cluster, rooms: list[str]) -> dict[str, str]:
    """Which node hosts each room: LiveKit's own map in the shared Valkey."""
    client = redis.Redis.from_url(cluster.livekit_redis_url)
    try:
        raw = client.hmget("room_node_map", rooms)
    finally:
        client.close()
    return {room: (node or b"").decode() for room, node in zip(rooms, raw, strict=True)}


async def delete_rooms(cluster: Cluster, rooms: list[str]) -> None:
    async with api.LiveKitAPI(cluster.settings().livekit.http_url, "testkey",
                              cluster.settings().livekit.api_secret.get_secret_value()) as lk:
        for room in rooms:
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
            except api.TwirpError:
                pass


async def test_sessions_spread_over_both_nodes_and_workers_and_the_cap_holds(
    cluster: Cluster,
) -> None:
    rooms: list[str] = []
    sids: list[str] = []
    try:
        # Filling the cluster one launch at a time: each goes to the node with the fewest
        # rooms and to the worker with the lowest load.
        for i in range(2 * CLUSTER_CAP):
            data = await asyncio.to_thread(launch, cluster, room=f"spread-{i}", greeting="")
            rooms.append(data["room"])
            sids.append(data["session"]["id"])
            await asyncio.to_thread(wait_for, lambda s=sids[-1]: record(cluster, s).status
                                    == "active", 120, f"session {i} to start")
            # the next room is placed by the nodes' room counts: once the node that has this
            # one has written its stats again, the count includes it
            node = room_nodes(cluster, [rooms[-1]])[rooms[-1]].encode()
            seen = node_records(cluster).get(node)
            await asyncio.to_thread(wait_for, lambda n=node, b=seen: node_records(cluster).get(n)
                                    not in (None, b), 30, "the node's stats to count the room")
        per_worker = running_per_worker(cluster)
        assert per_worker == {w: CLUSTER_CAP for w in WORKERS}, per_worker
        nodes = room_nodes(cluster, rooms)
        assert all(nodes.values()), nodes
        assert len(set(nodes.values())) == 2, nodes

        # Both workers at their cap: a further session is declined, never run over the cap.
        data = await asyncio.to_thread(launch, cluster, room="over-cap", greeting="")
        rooms.append(data["room"])
        over = data["session"]["id"]
        await asyncio.to_thread(
            wait_for, lambda: any("declining job: at the concurrent-session cap"
                                  in cluster.log_text(w) for w in WORKERS), 60,
            "a worker at its cap to decline")
        assert record(cluster, over).status != "active"
        assert running_per_worker(cluster) == {w: CLUSTER_CAP for w in WORKERS}

        # LiveKit dropped that dispatch; the back office sends it again until a worker has
        # a slot: one session ends, the waiting one takes its place, the cap still holds.
        freed = next(r for r, s in zip(rooms, sids, strict=False)
                     if worker_of(record(cluster, s)) == WORKERS[1])
        await delete_rooms(cluster, [freed])
        # (A new job process first loads the local models: a minute or more on two busy cores.)
        await asyncio.to_thread(wait_for, lambda: record(cluster, over).status == "active",
                                240, "the waiting session to start once a slot is free")
        assert worker_of(record(cluster, over)) == WORKERS[1]
        assert running_per_worker(cluster) == {w: CLUSTER_CAP for w in WORKERS}
        assert "no worker took the session; dispatched again" in cluster.log_text("celery")
    finally:
        await delete_rooms(cluster, rooms)
        await asyncio.to_thread(
            wait_for, lambda: not sum(running_per_worker(cluster).values()), 60,
            "the sessions to end")
