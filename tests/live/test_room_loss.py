"""A job tells a blip from a lost room (its node died) and hands the session back once."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc.event_emitter import EventEmitter

from live.room_loss import RoomLossWatch

pytestmark = pytest.mark.unit


class FakeRoom(EventEmitter[Any]):
    def __init__(self) -> None:
        super().__init__()
        self.local_participant = SimpleNamespace(sid="PA_1")


def _watch(room: FakeRoom, active: bool = True) -> tuple[RoomLossWatch, list[str]]:
    lost: list[str] = []

    async def on_lost(why: str) -> None:
        lost.append(why)

    watch = RoomLossWatch(room, active=lambda: active, on_lost=on_lost,  # type: ignore[arg-type]
                          lost_after=0.05)
    watch.start()
    return watch, lost


async def _settled(watch: RoomLossWatch) -> None:
    """Past the loss timer, and the hand-back (if any) has run."""
    await asyncio.sleep(0.1)  # the watch's own 0.05 s timer must have had its chance
    if watch.lost_task is not None:
        await asyncio.wait_for(watch.lost_task, 1.0)


async def test_a_blip_is_no_loss_and_the_caller_is_not_counted_gone_meanwhile() -> None:
    room = FakeRoom()
    watch, lost = _watch(room)
    room.emit("reconnecting")
    assert watch.reconnecting
    room.emit("reconnected")
    assert not watch.reconnecting
    await _settled(watch)
    assert lost == []


async def test_a_connection_that_does_not_come_back_is_handed_back_once() -> None:
    room = FakeRoom()
    watch, lost = _watch(room)
    room.emit("reconnecting")
    await _settled(watch)
    room.emit("disconnected", rtc.DisconnectReason.SIGNAL_CLOSE)
    await _settled(watch)
    assert lost == ["no reconnect"]


async def test_a_full_reconnect_as_a_new_participant_is_a_loss(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import live.room_loss

    monkeypatch.setattr(live.room_loss, "REJOIN_CHECK_SECONDS", 0.01)
    room = FakeRoom()
    watch, lost = _watch(room)
    room.emit("reconnecting")
    room.local_participant.sid = "PA_2"
    room.emit("reconnected")
    await _settled(watch)
    assert lost == ["full reconnect"]
    # the new participant's sid known only just after `reconnected`
    late = FakeRoom()
    watch2, lost2 = _watch(late)
    late.emit("reconnecting")
    late.emit("reconnected")
    late.local_participant.sid = "PA_3"
    await _settled(watch2)
    assert lost2 == ["full reconnect"]


@pytest.mark.parametrize("reason", [rtc.DisconnectReason.ROOM_DELETED,
                                    rtc.DisconnectReason.CLIENT_INITIATED,
                                    rtc.DisconnectReason.PARTICIPANT_REMOVED])
async def test_a_normal_end_is_no_loss(reason: rtc.DisconnectReason.ValueType) -> None:
    room = FakeRoom()
    watch, lost = _watch(room)
    room.emit("disconnected", reason)
    await _settled(watch)
    assert lost == []


async def test_an_unexpected_disconnect_is_a_loss_but_not_once_the_session_ends() -> None:
    room = FakeRoom()
    watch, lost = _watch(room)
    room.emit("disconnected", rtc.DisconnectReason.UNKNOWN_REASON)
    await _settled(watch)
    assert lost == ["disconnected (UNKNOWN_REASON)"]
    ending = FakeRoom()
    watch2, lost2 = _watch(ending, active=False)
    ending.emit("reconnecting")
    await _settled(watch2)
    assert lost2 == []
