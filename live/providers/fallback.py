"""Fallback chains: a hosted slot backed by a local one, so an outage degrades the voice only.

STT, LLM and TTS use LiveKit Agents' own ``FallbackAdapter`` classes, which switch to the next
instance when one raises (connect failure, 5xx, socket closed, timeout) and probe the failed
one in the background until it recovers. Avatars are started once per session, so their chain
is simply tried in order at start.

An avatar that runs as its own participant (a hosted vendor's worker, or the local renderer in
participant mode) receives the agent's speech over a data stream and reports when it has played
it. If that participant leaves mid-session nobody reports any more, and the agent would wait
for the playback forever. ``watch_avatar`` (started by ``start_avatar_with_fallback``) notices
the departure, gives the agent its own audio track back and ends any wait for the lost avatar.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from livekit import rtc
from livekit.agents import AgentSession, APIError, CloseEvent, llm, stt, tts
from livekit.agents.vad import VAD
from livekit.agents.voice.avatar import DataStreamAudioOutput
from livekit.agents.voice.io import AudioOutput
from livekit.agents.voice.room_io import ATTRIBUTE_PUBLISH_ON_BEHALF, AudioOutputOptions

from live.lk_compat import (
    RoomAudioOutput,
    datastream_destination,
    new_room_audio_output,
    pending_playback_count,
    room_audio_publication,
    silence_clear_buffer,
)
from live.providers.registry import ProviderError

logger = logging.getLogger(__name__)

NO_AVATAR = "none"


def build_stt_with_fallback(
    primary: stt.STT,
    fallback: stt.STT,
    *,
    vad: VAD | None = None,
    attempt_timeout: float = 10.0,
    max_retry_per_stt: int = 1,
    retry_interval: float = 5.0,
) -> stt.FallbackAdapter:
    """Streaming STT that switches to ``fallback`` when ``primary`` fails.

    The adapter is streaming; a non-streaming member (e.g. a local Whisper) is wrapped in
    ``stt.StreamAdapter``, which needs the session's VAD to cut utterances.
    """
    batch_only = [s.label for s in (primary, fallback) if not s.capabilities.streaming]
    if batch_only and vad is None:
        raise ProviderError(
            f"stt fallback needs a VAD: {', '.join(batch_only)} cannot stream on its own"
        )
    return stt.FallbackAdapter(
        [primary, fallback],
        vad=vad,
        attempt_timeout=attempt_timeout,
        max_retry_per_stt=max_retry_per_stt,
        retry_interval=retry_interval,
    )


def build_llm_with_fallback(
    primary: llm.LLM,
    fallback: llm.LLM,
    *,
    attempt_timeout: float = 10.0,
    max_retry_per_llm: int = 0,
    retry_interval: float = 0.5,
) -> llm.FallbackAdapter:
    """LLM that answers from ``fallback`` when ``primary`` fails before its first token.

    ``retry_on_chunk_sent`` stays off: once words were spoken, a second model restarting the
    answer would repeat them.
    """
    return llm.FallbackAdapter(
        [primary, fallback],
        attempt_timeout=attempt_timeout,
        max_retry_per_llm=max_retry_per_llm,
        retry_interval=retry_interval,
        retry_on_chunk_sent=False,
    )


def build_tts_with_fallback(
    primary: tts.TTS,
    fallback: tts.TTS,
    *,
    max_retry_per_tts: int = 1,
    sample_rate: int | None = None,
) -> tts.FallbackAdapter:
    """TTS that speaks with ``fallback`` when ``primary`` fails.

    The adapter resamples every member to one rate (``sample_rate``, default the highest), but
    cannot mix channel counts.
    """
    if primary.num_channels != fallback.num_channels:
        raise ProviderError(
            f"tts fallback: {primary.label} has {primary.num_channels} channel(s), "
            f"{fallback.label} has {fallback.num_channels}"
        )
    return tts.FallbackAdapter(
        [primary, fallback], max_retry_per_tts=max_retry_per_tts, sample_rate=sample_rate
    )


class Avatar(Protocol):
    async def start(self, agent_session: AgentSession, *, room: rtc.Room) -> None: ...


# Builds an avatar (or raises ProviderError); returning None means "no avatar".
AvatarFactory = Callable[[], Avatar | None]


def _describe(err: BaseException) -> str:
    """Our provider errors carry safe messages; anything else is cut short."""
    if isinstance(err, ProviderError | APIError):
        return str(err)
    if isinstance(err, TimeoutError):
        return "timed out waiting for the avatar to join"
    return f"{type(err).__name__}: {str(err)[:200]}"


def _audio_tail(agent_session: AgentSession) -> AudioOutput | None:
    cur = agent_session.output.audio
    while cur is not None and cur.next_in_chain is not None:
        cur = cur.next_in_chain
    return cur


def _restore_audio_tail(agent_session: AgentSession, tail: AudioOutput | None) -> None:
    """Undo a failed avatar's ``replace_audio_tail`` so the agent is not left talking to nobody."""
    if _audio_tail(agent_session) is tail:
        return
    if tail is None:
        agent_session.output.audio = None
    else:
        agent_session.output.replace_audio_tail(tail)


async def _close(avatar: Any) -> None:
    aclose = getattr(avatar, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.debug("closing a failed avatar raised", exc_info=True)


class ActiveAvatar(str):
    """The name of the avatar in use (a plain ``str`` to callers that only need that).

    ``avatar`` is the started avatar object (``None`` for "none"). ``watch`` is set when the
    avatar is a separate participant: it reports the avatar leaving mid-session and is closed
    with the agent session.
    """

    avatar: Any = None
    watch: AvatarWatch | None = None


async def start_avatar_with_fallback(
    chain: Sequence[tuple[str, AvatarFactory]],
    agent_session: AgentSession,
    room: rtc.Room,
    *,
    join_timeout: float | None = None,
    watch: bool = True,
    on_avatar_lost: LostCallback | None = None,
    fallback_on_loss: bool = False,
) -> ActiveAvatar:
    """Start the first avatar of ``chain`` that works; return its name (``"none"`` if none).

    Each factory builds its avatar (a ``ProviderError`` such as "Hedra ... discontinued" counts
    as a failure), then ``start`` runs once: hosted adapters never retry their paid POST, the
    next entry is the retry. With ``join_timeout`` an avatar must also publish its video in
    time. One error is logged naming what failed and what is used instead; the conversation
    itself never depends on an avatar.

    With ``watch`` (default), an avatar that is a separate participant is watched for the rest
    of the session (``result.watch``, see ``watch_avatar``); ``on_avatar_lost`` is then called
    if it leaves, and with ``fallback_on_loss`` the entries after it in ``chain`` are tried
    once the agent's own audio is back.
    """
    failures: list[str] = []
    active = NO_AVATAR
    started: Any = None
    rest: list[tuple[str, AvatarFactory]] = []  # what may replace the started avatar
    for index, (name, factory) in enumerate(chain):
        tail = _audio_tail(agent_session)
        avatar: Any = None
        try:
            avatar = factory()
            if avatar is None:
                active = name
                break
            await avatar.start(agent_session, room=room)
            if join_timeout is not None and hasattr(avatar, "wait_for_join"):
                await avatar.wait_for_join(timeout=join_timeout)
        except Exception as err:
            failures.append(f"{name}: {_describe(err)}")
            if avatar is not None:
                await _close(avatar)
            _restore_audio_tail(agent_session, tail)
            continue
        active = name
        started = avatar
        rest = list(chain[index + 1 :]) if fallback_on_loss else []
        break
    if failures:
        logger.error(
            "avatar %s failed; using %s (%s)",
            chain[0][0],
            "no avatar" if active == NO_AVATAR else repr(active),
            "; ".join(failures),
            extra={
                "room": room.name,
                "avatar": active,
                "failed": [f.split(":")[0] for f in failures],
            },
        )
    result = ActiveAvatar(active)
    result.avatar = started
    identity = getattr(started, "avatar_identity", None)
    if watch and isinstance(identity, str) and identity:
        tail = _audio_tail(agent_session)
        if isinstance(tail, DataStreamAudioOutput):  # speech goes to the avatar participant
            result.watch = watch_avatar(
                agent_session,
                room,
                identity,
                name=active,
                on_lost=on_avatar_lost,
                fallback=rest,
                fallback_join_timeout=join_timeout,
            )
    return result


@dataclass(frozen=True)
class AvatarLost:
    """What happened when an avatar participant left mid-session."""

    avatar: str  # its name in the chain, e.g. "tavus"
    identity: str  # its participant identity
    reason: str  # LiveKit's DisconnectReason name, e.g. "CLIENT_INITIATED"
    audio_restored: bool  # the agent publishes its own audio track again
    interrupted_segments: int  # speech segments the avatar never reported as played


LostCallback = Callable[[AvatarLost], Awaitable[None] | None]


class AvatarWatch:
    """Watches one avatar participant for the rest of an agent session (see ``watch_avatar``)."""

    def __init__(
        self,
        agent_session: AgentSession,
        room: rtc.Room,
        identity: str | None,
        *,
        name: str,
        on_lost: LostCallback | None,
        fallback: Sequence[tuple[str, AvatarFactory]],
        fallback_join_timeout: float | None,
        audio_options: AudioOutputOptions,
    ) -> None:
        self._session = agent_session
        self._room = room
        self._identity = identity
        self._name = name
        self._on_lost = on_lost
        self._fallback = list(fallback)
        self._fallback_join_timeout = fallback_join_timeout
        self._audio_options = audio_options
        self._lost_fut: asyncio.Future[AvatarLost] = asyncio.get_running_loop().create_future()
        self._room_audio: RoomAudioOutput | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replacement: asyncio.Task[ActiveAvatar] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed = False
        room.on("participant_disconnected", self._on_participant_disconnected)
        agent_session.on("close", self._on_session_close)

    @property
    def identity(self) -> str | None:
        return self._identity

    @property
    def lost(self) -> AvatarLost | None:
        """``None`` while the avatar is present (or the watch was closed first)."""
        fut = self._lost_fut
        return fut.result() if fut.done() and not fut.cancelled() else None

    @property
    def room_audio(self) -> AudioOutput | None:
        """The agent's own audio output that took over, once the avatar was lost."""
        return self._room_audio

    @property
    def closed(self) -> bool:
        return self._closed

    async def wait_lost(self) -> AvatarLost:
        """Until the avatar leaves (``CancelledError`` if the watch is closed first)."""
        return await asyncio.shield(self._lost_fut)

    async def wait_replacement(self) -> ActiveAvatar:
        """After a loss with ``fallback`` entries: the avatar started instead (or "none")."""
        await self.wait_lost()
        if self._replacement is None:
            return ActiveAvatar(NO_AVATAR)
        return await asyncio.shield(self._replacement)

    async def aclose(self) -> None:
        """Stop watching and release the restored audio output (called on session close)."""
        self._detach()
        if self._closing is None:
            self._closing = asyncio.create_task(self._release())
        await asyncio.shield(self._closing)

    def _detach(self) -> None:
        """Stop reacting at once: a departure from here on is the session's own doing."""
        if self._closed:
            return
        self._closed = True
        self._room.off("participant_disconnected", self._on_participant_disconnected)
        self._session.off("close", self._on_session_close)
        if not self._lost_fut.done():
            self._lost_fut.cancel()

    async def _release(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._room_audio is not None:
            await self._room_audio.aclose()
        replacement = self._replacement
        if replacement is not None and replacement.done() and not replacement.cancelled():
            # nobody else holds the avatar started in the lost one's place
            if replacement.exception() is None:
                started = replacement.result()
                if started.watch is not None:
                    await started.watch.aclose()
                if started.avatar is not None:
                    await _close(started.avatar)

    def _on_session_close(self, _ev: CloseEvent) -> None:
        self._detach()
        if self._closing is None:
            self._closing = asyncio.create_task(self._release())

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _is_avatar(self, participant: rtc.RemoteParticipant) -> bool:
        if self._identity is not None:
            return participant.identity == self._identity
        agent = self._room.local_participant.identity
        return participant.attributes.get(ATTRIBUTE_PUBLISH_ON_BEHALF) == agent

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if self._closed or self._lost_fut.done() or not self._is_avatar(participant):
            return
        # synchronously, so a playback wait on the lost avatar ends in this same loop turn
        restored, interrupted = self._restore_room_audio(participant.identity)
        reason = rtc.DisconnectReason.Name(
            participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON
        )
        lost = AvatarLost(
            avatar=self._name,
            identity=participant.identity,
            reason=reason,
            audio_restored=restored,
            interrupted_segments=interrupted,
        )
        logger.error(
            "avatar %s left the room mid-session (%s); %s",
            self._name,
            reason,
            "the agent speaks with its own audio track"
            if restored
            else "its audio output was no longer in use",
            extra={
                "room": self._room.name,
                "avatar": self._name,
                "identity": participant.identity,
                "interrupted_segments": interrupted,
            },
        )
        self._room.off("participant_disconnected", self._on_participant_disconnected)
        if restored and self._fallback:
            self._replacement = self._spawn(self._start_fallback())
        self._lost_fut.set_result(lost)
        if self._on_lost is not None:
            try:
                maybe = self._on_lost(lost)
                if inspect.isawaitable(maybe):
                    self._spawn(maybe)
            except Exception:
                logger.exception("on_lost callback failed", extra={"room": self._room.name})

    def _restore_room_audio(self, identity: str) -> tuple[bool, int]:
        """Swap the data stream to ``identity`` for a published track of the agent's own."""
        old = _audio_tail(self._session)
        if not isinstance(old, DataStreamAudioOutput):
            return False, 0
        destination = datastream_destination(old)
        if destination is not None and destination != identity:
            return False, 0
        interrupted = pending_playback_count(old)
        # the avatar is gone: a clear-buffer RPC to it could only fail after its timeout
        silence_clear_buffer(old)
        opts = self._audio_options
        new = new_room_audio_output(
            self._room,
            opts,
            track_name=opts.track_name if isinstance(opts.track_name, str) else ROOM_AUDIO_TRACK,
        )
        self._room_audio = new
        # the swap finishes segments already handed to the avatar (interrupted) and moves a
        # segment still being captured onto the new output
        self._session.output.replace_audio_tail(new)
        # without wrappers the old output was the whole chain: end its waits directly
        for _ in range(pending_playback_count(old)):
            old.on_playback_finished(playback_position=0.0, interrupted=True)
        self._spawn(self._publish(new))
        return True, interrupted

    async def _publish(self, out: RoomAudioOutput) -> None:
        try:
            await out.start()  # publishes, then waits until someone subscribes
        except Exception:
            logger.exception("publishing the agent's audio failed", extra={"room": self._room.name})

    async def _start_fallback(self) -> ActiveAvatar:
        active = await start_avatar_with_fallback(
            self._fallback,
            self._session,
            self._room,
            join_timeout=self._fallback_join_timeout,
            on_avatar_lost=self._on_lost,
        )
        out = self._room_audio
        if out is not None and _audio_tail(self._session) is not out:
            # the new avatar speaks for the agent now: retire our track
            self._room_audio = None
            await out.aclose()
            await _unpublish(self._room, out)
        return active


ROOM_AUDIO_TRACK = "roomio_audio"  # the name RoomIO gives the agent's audio track


async def _unpublish(room: rtc.Room, out: RoomAudioOutput) -> None:
    pub = room_audio_publication(out)
    if pub is None or not room.isconnected():
        return
    with contextlib.suppress(Exception):
        await room.local_participant.unpublish_track(pub.sid)


def watch_avatar(
    agent_session: AgentSession,
    room: rtc.Room,
    avatar_identity: str | None,
    *,
    name: str = "avatar",
    on_lost: LostCallback | None = None,
    fallback: Sequence[tuple[str, AvatarFactory]] = (),
    fallback_join_timeout: float | None = None,
    audio_options: AudioOutputOptions | None = None,
) -> AvatarWatch:
    """Keep the session talking if the avatar participant ``avatar_identity`` leaves.

    ``None`` matches any participant publishing on behalf of the agent (attribute
    ``lk.publish_on_behalf``). On departure, if the session's audio still goes to that
    participant: the agent publishes its own audio track again (like RoomIO would, from
    ``audio_options``), playback waits on the avatar end as interrupted, one error is logged,
    ``on_lost`` is called, and the ``fallback`` avatars are tried in order. The watch closes
    itself when the session closes; call ``aclose`` before removing the avatar on purpose.
    """
    return AvatarWatch(
        agent_session,
        room,
        avatar_identity,
        name=name,
        on_lost=on_lost,
        fallback=fallback,
        fallback_join_timeout=fallback_join_timeout,
        audio_options=audio_options or AudioOutputOptions(),
    )
