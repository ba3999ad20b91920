"""Session limits: maximum length, idle timeout, and leaving after the caller left.

Each ends the job with a reason (`max_length`, `idle`, `caller_left`) that is stored as the
session's end reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, JobContext

logger = logging.getLogger(__name__)

CALLER_KINDS = (rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD, rtc.ParticipantKind.PARTICIPANT_KIND_SIP)


class SessionLifecycle:
    def __init__(
        self,
        ctx: JobContext,
        session: AgentSession[Any],
        *,
        max_minutes: float,
        idle_seconds: float,
        grace_seconds: float,
    ) -> None:
        self._ctx = ctx
        self._session = session
        self._max_seconds = max_minutes * 60.0
        self._idle_seconds = idle_seconds
        self._grace_seconds = grace_seconds
        self._last_activity = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()
        self._grace_task: asyncio.Task[None] | None = None
        self._caller_seen = False
        self.end_reason = "ended"
        # Whether the room connection itself is down (live.room_loss): callers vanish from
        # the room then, but have not left.
        self.room_down: Callable[[], bool] = lambda: False

    def start(self) -> None:
        s, room = self._session, self._ctx.room
        s.on("user_state_changed", self._touch)
        s.on("agent_state_changed", self._touch)
        s.on("conversation_item_added", self._touch)
        room.on("participant_connected", self._on_joined)
        room.on("participant_disconnected", self._on_left)
        room.on("reconnected", lambda: self._on_left(None))  # nobody back: the grace again
        s.on("close", lambda ev: self._cancel_all())
        self._spawn(self._max_length())
        self._spawn(self._idle_watch())
        if self._callers():
            self._caller_seen = True
        else:
            self._on_left(None)  # nobody there yet: the grace timer covers a caller who never comes

    def _spawn(self, coro: Any) -> None:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _cancel_all(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._grace_task:
            self._grace_task.cancel()

    def _end(self, reason: str) -> None:
        if self.end_reason != "ended":
            return
        self.end_reason = reason
        logger.info("ending session: %s", reason)
        self._ctx.shutdown(reason=reason)

    def _touch(self, *_: Any) -> None:
        self._last_activity = time.monotonic()

    def _callers(self, leaving: rtc.RemoteParticipant | None = None) -> list[rtc.RemoteParticipant]:
        # the leaving participant may still be listed while its disconnect event runs
        return [
            p
            for p in self._ctx.room.remote_participants.values()
            if p.kind in CALLER_KINDS and (leaving is None or p.identity != leaving.identity)
        ]

    def _on_joined(self, p: rtc.RemoteParticipant) -> None:
        if p.kind not in CALLER_KINDS:
            return
        self._caller_seen = True
        if self._grace_task:
            self._grace_task.cancel()
            self._grace_task = None
        self._touch()

    def _on_left(self, p: rtc.RemoteParticipant | None) -> None:
        if self._callers(leaving=p) or self._grace_task:
            return
        self._grace_task = asyncio.create_task(self._grace())

    async def _grace(self) -> None:
        # a caller who has not yet joined gets at least the idle timeout to arrive
        wait = max(self._grace_seconds, 0.0 if self._caller_seen else self._idle_seconds)
        await asyncio.sleep(wait)  # a timer, not synchronisation
        self._grace_task = None
        if self.room_down():
            return  # the connection, not the caller: a reconnect arms the grace again
        if not self._callers():
            self._end("caller_left")

    async def _max_length(self) -> None:
        await asyncio.sleep(self._max_seconds)
        self._end("max_length")

    async def _idle_watch(self) -> None:
        while True:
            remaining = self._idle_seconds - (time.monotonic() - self._last_activity)
            if remaining <= 0:
                if self._session.agent_state == "speaking" or self._session.user_state == "speaking":
                    self._touch()
                    continue
                self._end("idle")
                return
            await asyncio.sleep(min(remaining, 1.0))
