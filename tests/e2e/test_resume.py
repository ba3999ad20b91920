"""A session survives its job: SIGKILLed mid-session, the agent comes back for the same caller.

On the real cluster (two nodes, two live workers, web receiving LiveKit's webhooks, Celery):
the caller stays in the room, the job running the session is SIGKILLed; LiveKit reports the
agent gone (`participant_left`), the back office dispatches the session again, a job on a
worker with a free slot claims it, rebuilds the conversation from the stored transcript and
speaks; the caller hears it. The transcript goes on under the same session, and usage is the
sum of both jobs, counted once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import numpy as np
import pytest
from livekit import rtc
from sqlalchemy import select

from store.db import session_scope
from store.models import AgentSessionRecord, SessionCost, TranscriptLine, UsageRecord, WebhookEvent
from store.resume import RESUME_LINE
from tests.e2e.conftest import WORKERS, Cluster
from tests.e2e.test_cluster import launch, record
from tests.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GREETING = "Hello, I am here to help you today."
# Re-dispatch: from LiveKit reporting the agent gone to the new agent in the room.
REDISPATCH_BOUND_S = 5.0
# Kill to the caller hearing the agent again, on a loaded two-core machine.
HEARD_AGAIN_BOUND_S = 60.0


class Ears:
    """The caller's ears: when each remote participant was first heard (audio above noise)."""

    def __init__(self, room: rtc.Room) -> None:
        self.first_heard: dict[str, float] = {}
        self.changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        room.on("track_subscribed", self._on_track)

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            t = asyncio.create_task(self._listen(track, participant.identity))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _listen(self, track: rtc.Track, identity: str) -> None:
        async for ev in rtc.AudioStream(track, sample_rate=16000, num_channels=1):
            samples = np.frombuffer(ev.frame.data, dtype=np.int16).astype(np.float32)
            if samples.size and float(np.sqrt(np.mean(samples**2))) > 300.0:
                if identity not in self.first_heard:
                    self.first_heard[identity] = time.monotonic()
                    self.changed.set()

    async def wait_for_new_voice(self, known: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            new = [i for i in self.first_heard if i not in known]
            if new:
                return new[0]
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        for t in self._tasks:
            t.cancel()


async def first_exchange(
    cluster: Cluster, sid: str, caller: rtc.Room, ears: Ears
) -> tuple[str, list[tuple[str, str]], AgentSessionRecord]:
    """The first job greets the caller, who types a line, and the agent answers; all of it is
    stored, and its usage (checkpoints every 5 s). The first agent heard, the lines, the
    session's record (active, held by that job)."""
    first_agent = await ears.wait_for_new_voice(set(), 120)
    await asyncio.to_thread(wait_for, lambda: ("agent", GREETING) in _lines(cluster, sid),
                            60, "the greeting stored")
    await caller.local_participant.send_text("My name is Sam.", topic="lk.chat")
    await asyncio.to_thread(
        wait_for, lambda: len(_lines(cluster, sid)) >= 3, 120,
        "the caller's line and the agent's answer stored")
    before = _lines(cluster, sid)
    said = sum(len(text) for who, text in before if who == "agent")
    await asyncio.to_thread(
        wait_for, lambda: _usage(cluster, sid, "tts_characters") >= said, 30,
        "the usage so far stored")
    rec = record(cluster, sid)
    assert rec.status == "active" and rec.worker_id
    return first_agent, before, rec


def _lines(cluster: Cluster, sid: str) -> list[tuple[str, str]]:
    with session_scope(cluster.db_url) as db:
        return [(r.speaker, r.text) for r in db.scalars(
            select(TranscriptLine).where(TranscriptLine.session_id == sid)
            .order_by(TranscriptLine.started_at, TranscriptLine.id))]


def _usage(cluster: Cluster, sid: str, metric: str) -> float:
    with session_scope(cluster.db_url) as db:
        return float(db.scalar(select(UsageRecord.quantity).where(
            UsageRecord.session_id == sid, UsageRecord.metric == metric)) or 0.0)


def _event_time(cluster: Cluster, event: str, room: str, after: float) -> float | None:
    """When web received a LiveKit webhook for the room (wall clock), the first after `after`."""
    with session_scope(cluster.db_url) as db:
        times = [r.received_at.timestamp() if r.received_at.tzinfo else
                 r.received_at.replace(tzinfo=__import__("datetime").UTC).timestamp()
                 for r in db.scalars(select(WebhookEvent).where(
                     WebhookEvent.event == event, WebhookEvent.room == room))]
    later = sorted(t for t in times if t >= after)
    return later[0] if later else None


async def _session_survives(cluster: Cluster, room: str, kill_whole_worker: bool) -> None:
    data = await asyncio.to_thread(launch, cluster, room=room, identity="caller-1",
                                   greeting=GREETING, text_chat=True)
    sid = data["session"]["id"]
    caller = rtc.Room()
    ears = Ears(caller)
    await caller.connect(data["livekit_url"], data["token"])
    try:
        first_agent, before, rec = await first_exchange(cluster, sid, caller, ears)
        lost_worker, job_pid = rec.worker_id.split(":")[0], int(rec.worker_id.split(":")[1])
        started_at = rec.started_at

        killed_wall, killed = time.time(), time.monotonic()
        if kill_whole_worker:  # the worker's main process and its job processes
            os.killpg(cluster.worker_pids[lost_worker], signal.SIGKILL)
        else:
            os.kill(job_pid, signal.SIGKILL)

        # The caller hears an agent again: a new participant, in the same room.
        second_agent = await ears.wait_for_new_voice({first_agent}, HEARD_AGAIN_BOUND_S)
        heard_after = ears.first_heard[second_agent] - killed
        assert caller.connection_state == rtc.ConnectionState.CONN_CONNECTED

        # Re-dispatched within the bound of LiveKit reporting the loss.
        left = await asyncio.to_thread(
            wait_for, lambda: _event_time(cluster, "participant_left", room, killed_wall), 10,
            "the participant_left webhook")
        rejoined = await asyncio.to_thread(
            wait_for, lambda: _event_time(cluster, "participant_joined", room, float(left)),
            10, "the new agent's participant_joined webhook")
        visible_after, redispatch = float(left) - killed_wall, float(rejoined) - float(left)
        print(f"\n{'worker' if kill_whole_worker else 'job process'} SIGKILLed: loss visible "
              f"after {visible_after:.2f} s, new agent joined {redispatch:.2f} s later, "
              f"agent heard again {heard_after:.2f} s after the kill")
        assert redispatch <= REDISPATCH_BOUND_S

        # The same session goes on: another job holds it, its conversation was rebuilt from
        # the stored lines, the transcript continues; started_at is the first job's.
        await asyncio.to_thread(
            wait_for, lambda: ("agent", RESUME_LINE) in _lines(cluster, sid), 30,
            "the resumed agent's line stored")
        rec = record(cluster, sid)
        assert rec.status == "active" and rec.started_at == started_at
        assert rec.worker_id and not rec.worker_id.startswith(f"{lost_worker}:{job_pid}:")
        if kill_whole_worker:
            assert not rec.worker_id.startswith(f"{lost_worker}:")
        after = _lines(cluster, sid)
        assert after[: len(before)] == before and after[len(before)] == ("agent", RESUME_LINE)
        restored = [json.loads(line) for w in WORKERS for line in
                    cluster.log_text(w).splitlines()
                    if "resuming the session on this worker" in line and sid in line]
        assert [r["lines"] for r in restored] == [len(before)]
    finally:
        ears.close()
        await caller.disconnect()

    # Billing once: both jobs' speech, each counted once.
    await asyncio.to_thread(wait_for, lambda: record(cluster, sid).billed_at, 120,
                            "the session ended and billed")
    spoken = sum(len(text) for who, text in _lines(cluster, sid) if who == "agent")
    with session_scope(cluster.db_url) as db:
        billed = db.scalar(select(SessionCost.quantity).where(
            SessionCost.session_id == sid, SessionCost.metric == "tts_characters"))
    assert billed is not None
    assert abs(billed - spoken) <= 4, (billed, spoken)
    # The room's minutes run from the first job's start to the last job's end, once.
    rec = record(cluster, sid)
    assert rec.started_at is not None and rec.ended_at is not None
    with session_scope(cluster.db_url) as db:
        minutes = db.scalars(select(SessionCost.quantity).where(
            SessionCost.session_id == sid, SessionCost.metric == "room_minutes")).all()
    assert len(minutes) == 1
    assert abs(minutes[0] - (rec.ended_at - rec.started_at).total_seconds() / 60) < 0.02


async def test_sigkilled_job_is_resumed_for_the_same_caller_with_its_transcript(
    cluster: Cluster,
) -> None:
    await _session_survives(cluster, "resume-job", kill_whole_worker=False)


async def test_sigkilled_worker_session_moves_to_the_other_worker(cluster: Cluster) -> None:
    try:
        await _session_survives(cluster, "resume-worker", kill_whole_worker=True)
    finally:  # the killed worker starts again, so the cluster's later tests have both
        for name in WORKERS:
            await asyncio.to_thread(cluster.restart_worker, name)
