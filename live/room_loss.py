"""A job that loses its room (its LiveKit node died) hands the session back for a resume.

When the node hosting the room, or the node the job signals through, is killed, LiveKit sends
no webhook and nobody else sees the loss: the job does. Its room connection drops
(`reconnecting`); a connection that comes back within :data:`LOST_AFTER_SECONDS` was a blip.
One that does not, or that ends (`disconnected` for a reason that is not a normal end), is
a lost room: the job writes its usage so far, asks the back office to dispatch the session
again (``tasks.resume.resume_session`` with ``room_lost``), and shuts down without ending
the session. A full reconnect (the SDK rejoining as a new participant, after the room moved
to another node) counts as lost too: the new job's path is the one tested and the SDK's
full reconnect restarts the room's media under a running session.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from livekit import rtc

logger = logging.getLogger(__name__)

# A signal resume against a live node takes well under a second; a dead node refuses at once.
LOST_AFTER_SECONDS = 2.0
REJOIN_CHECK_SECONDS = 1.0

# Ends that are not a loss: we left, the back office closed the room, or removed the agent.
_NORMAL_ENDS = frozenset({
    rtc.DisconnectReason.CLIENT_INITIATED,
    rtc.DisconnectReason.DUPLICATE_IDENTITY,
    rtc.DisconnectReason.PARTICIPANT_REMOVED,
    rtc.DisconnectReason.ROOM_DELETED,
    rtc.DisconnectReason.ROOM_CLOSED,
})


class RoomLossWatch:
    """Calls ``on_lost`` once when the room connection is gone for good.

    ``active()`` says whether the session is still running (a session ending on purpose
    disconnects too: that is no loss). ``reconnecting`` tells the lifecycle not to count the
    caller as gone while the connection itself is down.
    """

    def __init__(self, room: rtc.Room, active: Callable[[], bool],
                 on_lost: Callable[[str], Coroutine[Any, Any, None]],
                 lost_after: float = LOST_AFTER_SECONDS) -> None:
        self._room = room
        self._active = active
        self._on_lost = on_lost
        self._lost_after = lost_after
        self._timer: asyncio.TimerHandle | None = None
        self._since: float | None = None
        self._sid = ""
        self.reconnecting = False
        self.lost_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._sid = self._room.local_participant.sid
        self._room.on("reconnecting", self._on_reconnecting)
        self._room.on("reconnected", self._on_reconnected)
        self._room.on("disconnected", self._on_disconnected)

    def _on_reconnecting(self) -> None:
        self.reconnecting = True
        self._since = time.monotonic()
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                self._lost_after, self._lost, "no reconnect")

    def _on_reconnected(self) -> None:
        self.reconnecting = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        logger.info("room connection back", extra={
            "after_s": round(time.monotonic() - (self._since or time.monotonic()), 2)})
        self._check_rejoined()
        # the new participant's info may reach the SDK just after `reconnected`: look again
        asyncio.get_running_loop().call_later(REJOIN_CHECK_SECONDS, self._check_rejoined)

    def _check_rejoined(self) -> None:
        sid = self._room.local_participant.sid
        if sid and self._sid and sid != self._sid:
            self._lost("full reconnect")

    def _on_disconnected(
        self, reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.UNKNOWN_REASON
    ) -> None:
        if reason not in _NORMAL_ENDS:
            self._lost(f"disconnected ({rtc.DisconnectReason.Name(reason)})")

    def _lost(self, why: str) -> None:
        self._timer = None
        if self.lost_task is not None or not self._active():
            return
        logger.warning("room connection lost (its node is gone?): handing the session back",
                       extra={"why": why})
        self.lost_task = asyncio.get_running_loop().create_task(self._on_lost(why))
