"""Every use of a LiveKit Agents internal, in one place (read at livekit-agents 1.8.9).

LiveKit Agents releases every few weeks and its underscored names may change in any of them.
The rest of the code calls the functions here instead of touching a private name, so an
upgrade is one file to read, and ``tests/live/test_lk_compat.py`` (one test per internal)
fails naming the internal when an upgrade changed it. Each function says why the public API
does not suffice and what upstream change would remove it; when that lands, inline the public
call and delete the function and its test.

Not listed here: the hooks of the STT/LLM/TTS stream base classes that LiveKit's own plugins
are written against (``_run``, ``_event_ch``, ``_input_ch``, ``_mark_started``, ``_chat_ctx``,
``_tools``, ``_conn_options``).


Not here, but tested in the same file: ``live/providers/fallback.py`` subclasses LiveKit's
fallback adapters (``FallbackLLMStream._try_generate``, ``FallbackSynthesizeStream.
_try_synthesize``, ``_pushed_tokens``, ``_try_recovery``, the adapters' ``_status`` and member
lists) to answer within the turn a hosted provider failed in; LiveKit's own adapters drop the
rest of that turn. Removed by: upstream fallback adapters that resume mid-stream. The TTS
streams' ``_try_synthesize`` (``FallbackChunkedStream``'s too) is also where a local fallback
voice not loaded yet is loaded, in a thread, before the adapter asks it to speak
(``live/providers/lazy.py``).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from livekit import rtc
from livekit.agents.voice.avatar import (
    AvatarRunner,
    AvatarSession,
    DataStreamAudioOutput,
    DataStreamAudioReceiver,
)
from livekit.agents.voice.io import AudioOutput
from livekit.agents.voice.room_io import AudioOutputOptions
from livekit.agents.voice.room_io import _ParticipantAudioOutput as RoomAudioOutput

if TYPE_CHECKING:
    import aiohttp
    from livekit.agents import AgentServer, APIConnectOptions
    from livekit.plugins import assemblyai
    from livekit.plugins.assemblyai.stt import SpeechStream

LIVEKIT_AGENTS_READ_AT = "1.8.9"

__all__ = [
    "LIVEKIT_AGENTS_READ_AT",
    "UPSTREAM_PUBLISH_TRACK_SHA256",
    "RoomAudioOutput",
    "assemblyai_guarded_stream",
    "datastream_destination",
    "delay_captions",
    "detach_self_published_avatar",
    "drop_queued_streams",
    "keep_played_words",
    "new_room_audio_output",
    "on_job_process_closed",
    "pending_playback_count",
    "played_text",
    "publish_runner_tracks",
    "replace_runner_synchronizer",
    "report_load_now",
    "room_audio_publication",
    "runner_audio_receiver",
    "runner_media_sources",
    "runner_queue_kwargs",
    "silence_clear_buffer",
    "upstream_publish_track_digest",
]


# --- audio outputs: the avatar-loss fallback (live/providers/fallback.py) -------------------


def pending_playback_count(output: AudioOutput) -> int:
    """Segments captured by ``output`` whose playback has not been reported finished.

    Why: when an avatar participant leaves, nobody will report its queued segments as played,
    and ``AudioOutput.wait_for_playout`` would wait forever; we end those waits ourselves.
    Public ``captured_playout_segments`` gives the captured count but not the finished one.
    Removed by: a public pending count (or a public "abandon pending playbacks") on
    ``AudioOutput``; no upstream issue known.
    """
    return int(output._pending_playback_count)


def datastream_destination(output: DataStreamAudioOutput) -> str | None:
    """The participant identity a data-stream audio output sends the agent's speech to.

    Why: to tell whether the session still talks to the avatar that just left.
    Removed by: a public ``destination_identity`` property on ``DataStreamAudioOutput``.
    """
    value = getattr(output, "_destination_identity", None)
    return value if isinstance(value, str) else None


def _no_clear_buffer() -> None:
    """``clear_buffer`` of a data-stream output whose avatar has left: nothing to clear."""


def silence_clear_buffer(output: DataStreamAudioOutput) -> None:
    """Make ``output.clear_buffer()`` a no-op (its avatar has left the room).

    Why: ``DataStreamAudioOutput.clear_buffer`` sends the ``lk.clear_buffer`` RPC to the
    avatar and waits ``clear_buffer_timeout`` (2 s) for an answer that cannot come; the swap
    to the agent's own track interrupts through it. Replacing a method on an instance is not
    an API. Removed by: ``DataStreamAudioOutput`` noticing its destination left (it watches
    the room already) and skipping the RPC; no upstream issue known.
    """
    output.clear_buffer = _no_clear_buffer  # type: ignore[method-assign]


def new_room_audio_output(
    room: rtc.Room, options: AudioOutputOptions, *, track_name: str
) -> RoomAudioOutput:
    """The agent's own published audio track, as ``RoomIO`` builds it.

    Why: when the avatar participant leaves mid-session, the agent publishes its voice again
    itself. ``RoomIO`` builds this output once at session start and offers no way to build
    another; ``_ParticipantAudioOutput`` is exported from ``voice.room_io`` but private.
    Removed by: a public participant audio output in Python (agents-js already exports
    ``voice.ParticipantAudioOutput``; see livekit/agents-js#2040 for the same fallback there).
    """
    return RoomAudioOutput(
        room,
        sample_rate=options.sample_rate,
        num_channels=options.num_channels,
        track_publish_options=options.track_publish_options,
        track_name=track_name,
    )


def room_audio_publication(output: RoomAudioOutput) -> rtc.LocalTrackPublication | None:
    """The track publication of an output from ``new_room_audio_output`` (None before).

    Why: to unpublish the agent's own track when a replacement avatar takes over; closing
    the output does not unpublish it. Removed by: a public ``publication`` (or an
    ``aclose`` that unpublishes) on the participant audio output.
    """
    pub = getattr(output, "_publication", None)
    return pub if isinstance(pub, rtc.LocalTrackPublication) else None


# --- the avatar's own side: receiver and runner (live/avatar/) --------------------------------


def drop_queued_streams(receiver: DataStreamAudioReceiver) -> int:
    """Drop the audio streams queued on ``receiver`` but not yet read; returns how many.

    Why: on ``lk.clear_buffer`` 1.8.9 discards the stream being read and the decoded frames
    (livekit/agents#4030) but not streams whose header arrived just before the RPC: they
    would play in full after the interruption. Removed by: the receiver's clear-buffer
    handler also clearing its queued readers.
    """
    readers = receiver._stream_readers
    dropped = len(readers)
    readers.clear()
    return dropped


def runner_queue_kwargs(queue_ms: int) -> dict[str, Any]:
    """Keyword arguments giving ``AvatarRunner`` an audio queue of ``queue_ms``.

    Why: the audio queue's length bounds how far the sound runs ahead of the picture; the
    runner takes it only as the private ``_queue_size_ms``. Removed by: a public argument.
    """
    return {"_queue_size_ms": queue_ms}


def runner_media_sources(runner: AvatarRunner) -> tuple[rtc.AudioSource, rtc.VideoSource]:
    """The audio and video sources ``AvatarRunner`` created and publishes.

    Why: our synchronizer (``live.avatar.publish.AudioClockSynchronizer``) feeds the same
    sources. Removed by: ``AvatarRunner`` accepting a synchronizer (or sources) as an argument.
    """
    return runner._audio_source, runner._video_source


def runner_audio_receiver(runner: AvatarRunner) -> Any:
    """The ``AudioReceiver`` the runner reads the agent's speech from (to wrap its
    ``notify_playback_started``). Removed by: a public ``audio_recv`` property."""
    return runner._audio_recv


def replace_runner_synchronizer(runner: AvatarRunner, sync: Any) -> None:
    """Stop the runner's stock ``rtc.AVSynchronizer`` and push frames through ``sync``.

    Why: the stock synchronizer paces video by its own frame-rate clock, which drifts from the
    audio queue (see ``live/avatar/publish.py``). Must run before ``start``: nothing has
    been pushed yet. Removed by: ``AvatarRunner(av_sync=...)``; no upstream issue known.
    """
    stock = runner._av_sync
    stock._stopped = True
    stock._capture_video_task.cancel()
    runner._av_sync = sync


def rewind_runner_playback(runner: AvatarRunner, seconds: float) -> None:
    """Take ``seconds`` off the runner's count of the reply's audio played so far.

    Why: the runner counts every audio frame it pushes as played, and reports that count as
    the playback position on an interruption (the words kept in the transcript, see
    ``keep_played_words``). Sound a pause takes back from the source's queue is pushed again
    on resume, so it would count twice; sound an interruption drops from that queue never
    played. Removed by: a runner that counts played (not pushed) audio.
    """
    runner._playback_position = max(0.0, runner._playback_position - seconds)


def played_text(text: str, timed_chars: Callable[[float], float], position: float) -> str:
    """The reply's words whose sound played by ``position`` seconds of its audio.

    ``timed_chars(t)``: how many characters of ``text`` the voice's word timings put before
    audio time ``t``. A word cut while it played is kept when most of it was heard.
    """
    n = max(0.0, min(float(len(text)), timed_chars(position)))
    cut = int(n)
    if 0 < cut < len(text) and not text[cut - 1].isspace() and not text[cut].isspace():
        start = cut
        while start > 0 and not text[start - 1].isspace():
            start -= 1
        end = cut
        while end < len(text) and not text[end].isspace():
            end += 1
        cut = end if (n - start) >= (end - start) / 2 else start
    return text[:cut].rstrip()


def keep_played_words(output: AudioOutput | None) -> bool:
    """An interrupted reply keeps the words its sound played, not the words its captions reached.

    Why: LiveKit's transcript synchronizer (``_SyncedAudioOutput``, RoomIO's audio output when
    transcriptions are synchronised) stores for an interrupted reply the text its captions
    had reached, paced by the wall clock since playback started; it ignores the playback
    position the output reports. When the sound runs behind that clock (a busy machine, a
    pause that took queued sound back) the stored reply, and the LLM's memory of it, held
    words the caller never heard. With the voice's word timings (TTS-aligned transcripts) the
    position says which words played. Returns False when ``output`` is no synchronised output
    (nothing to do). Removed by: upstream cutting the synchronized transcript at the reported
    playback position.
    """
    from livekit.agents.voice.transcription.synchronizer import _SyncedAudioOutput

    if not isinstance(output, _SyncedAudioOutput):
        return False
    synced = output
    original = synced.on_playback_finished

    def on_playback_finished(*, playback_position: float, interrupted: bool,
                             synchronized_transcript: str | None = None) -> None:
        sync = synced._synchronizer
        impl = sync._impl
        timed = impl._audio_data.annotated_rate
        # a position of 0 may be an avatar worker that does not count: keep LiveKit's text
        if interrupted and playback_position > 0 and sync.enabled and not impl.closed \
                and timed is not None and timed.timestamps:
            # the timings cover the words synthesised so far (the text may run on past them)
            timed_total = timed.speak_integrals[-1] + sum(len(t) for t in timed._text_buffer)

            def timed_chars(t: float, timed: Any = timed, total: float = timed_total) -> float:
                return min(float(timed.accumulate_to(t)), total)

            impl._text_data.forwarded_text = played_text(
                impl._text_data.pushed_text, timed_chars, playback_position
            )
        original(playback_position=playback_position, interrupted=interrupted,
                 synchronized_transcript=synchronized_transcript)

    synced.on_playback_finished = on_playback_finished  # type: ignore[method-assign]
    return True


def delay_captions(output: AudioOutput | None, seconds: float) -> bool:
    """The reply's sound went silent for ``seconds`` (its voice or its face fell behind):
    the captions wait as long, so they stay with the words as the caller hears them.

    Why: LiveKit's transcript synchronizer paces the captions of the reply being played by
    the wall clock since its playback started, less the time the output was paused; sound
    that came late does not hold them. On a busy machine a reply's sound stalled 1.4 s in all
    and its last caption came 2.3 s before its last word. Added to the synchronizer's paused
    time (``_SegmentSynchronizerImpl._paused_duration``), the stall moves the captions' clock
    back: the words already shown stay, the next wait for their sound. Returns False when no
    synchronised reply is playing (nothing to do). Removed by: upstream pacing captions by the
    playback position the output reports.
    """
    from livekit.agents.voice.transcription.synchronizer import _SyncedAudioOutput

    node = output
    while node is not None and not isinstance(node, _SyncedAudioOutput):
        node = node.next_in_chain
    if node is None or seconds <= 0:
        return False
    impl = node._synchronizer._impl
    if impl.closed or impl._start_wall_time is None:
        return False
    impl._paused_duration += seconds
    return True


# sha256 of ``inspect.getsource(AvatarRunner._publish_track)`` as read at 1.8.9:
# ``publish_runner_tracks`` repeats its steps, so a change upstream must be read again.
UPSTREAM_PUBLISH_TRACK_SHA256 = "15530e37b69376c8ce2502e0a28641395b31631a0b6cee0bea9d337f792f8d34"


def upstream_publish_track_digest() -> str:
    """Digest of the installed ``AvatarRunner._publish_track``, which ``publish_runner_tracks``
    copies: the tests compare it with ``UPSTREAM_PUBLISH_TRACK_SHA256``."""
    source = inspect.getsource(AvatarRunner._publish_track)
    return hashlib.sha256(inspect.cleandoc(source).encode()).hexdigest()


async def publish_runner_tracks(
    runner: AvatarRunner,
    *,
    audio_options: rtc.TrackPublishOptions,
    video_options: rtc.TrackPublishOptions,
) -> None:
    """``AvatarRunner._publish_track`` with our publish options (the same steps, in order).

    Why: the runner publishes video with default options (simulcast layers whose frame rate
    and bitrate do not follow the avatar's) and the two tracks as separate streams; a talking
    face needs one layer at full frame rate, and both tracks in one stream so receivers sync
    them. Removed by: ``AvatarRunner`` taking audio/video ``TrackPublishOptions``.
    """
    async with runner._lock:
        await runner._room_connected_fut
        room = runner._room
        audio_source, video_source = runner_media_sources(runner)
        audio_track = rtc.LocalAudioTrack.create_audio_track("avatar_audio", audio_source)
        runner._audio_publication = await room.local_participant.publish_track(
            audio_track, audio_options
        )
        await runner._audio_publication.wait_for_subscription()
        video_track = rtc.LocalVideoTrack.create_video_track("avatar_video", video_source)
        runner._video_publication = await room.local_participant.publish_track(
            video_track, video_options
        )


# --- AssemblyAI plugin (live/providers/assemblyai.py) ----------------------------------------

ConnectGuard = Callable[
    [Callable[[], Awaitable["aiohttp.ClientWebSocketResponse"]]],
    Awaitable["aiohttp.ClientWebSocketResponse"],
]


@functools.cache
def _guarded_stream_class() -> type[SpeechStream]:
    from livekit.plugins.assemblyai.stt import SpeechStream

    class GuardedSpeechStream(SpeechStream):
        """The plugin's stream; its websocket connect runs through ``connect_guard``."""

        connect_guard: ConnectGuard

        async def _connect_ws(self) -> aiohttp.ClientWebSocketResponse:
            return await self.connect_guard(super()._connect_ws)

    return GuardedSpeechStream


def assemblyai_guarded_stream(
    stt: assemblyai.STT, *, conn_options: APIConnectOptions, connect_guard: ConnectGuard
) -> SpeechStream:
    """What ``assemblyai.STT.stream()`` returns, with its connect wrapped by ``connect_guard``.

    Why: the plugin (1.8.9) lets a refused handshake escape as aiohttp's
    ``WSServerHandshakeError``, whose repr carries the request headers (the API key) and
    which LiveKit does not retry; the only place to catch it is the stream's private
    ``_connect_ws``, and building the stream needs the STT's private options. Removed by:
    the plugin raising ``APIStatusError``/``APIConnectionError`` from ``_connect_ws``
    (the Cartesia plugin already does).
    """
    import dataclasses

    stream = _guarded_stream_class()(
        stt=stt,
        conn_options=conn_options,
        opts=dataclasses.replace(stt._opts),
        api_key=stt._api_key,
        http_session=stt.session,
        base_url=stt._base_url,
    )
    stream.connect_guard = connect_guard  # type: ignore[attr-defined]
    stt._streams.add(stream)
    return stream


# --- the worker (AgentServer) --------------------------------------------------------------


def on_job_process_closed(server: AgentServer, callback: Callable[[Any], None]) -> bool:
    """Call ``callback(proc)`` when one of the server's job processes closes (dies).

    Why: a SIGKILLed job process leaves its agent in the room until LiveKit's media timeout
    (~20 s); the worker sees the death at once through its process pool's
    ``process_closed`` event, which ``AgentServer`` does not re-emit. Removed by: an
    ``AgentServer`` event for a job process that exited (none known upstream).
    Call once the server has started (its pool exists then). False: not available.
    """
    pool = getattr(server, "_proc_pool", None)
    if pool is None:
        return False
    pool.on("process_closed", callback)
    return True


async def report_load_now(server: AgentServer) -> bool:
    """Send the worker's load to LiveKit now rather than at its next 2.5 s update.

    Why: in a cluster LiveKit gives a job to the node whose workers report the most headroom;
    a worker that just took a job but still reports its old load wins the next job too and
    must decline it (livekit/agents#4884: load updates every 0.5 s at best, 2.5 s here).
    Uses ``_refresh_worker_load`` and ``_update_worker_status``. Removed by: a public
    "update status now" on ``AgentServer``. False: not available.
    """
    refresh = getattr(server, "_refresh_worker_load", None)
    update = getattr(server, "_update_worker_status", None)
    if refresh is None or update is None:
        return False
    await refresh()
    await update()
    return True


# --- AvatarSession: an avatar the agent publishes itself (live/avatar/session.py) ------------


def detach_self_published_avatar(session: AvatarSession, room: rtc.Room) -> None:
    """Let ``AvatarSession.aclose`` tidy up without removing the agent from its room.

    Why: the in-process local face is published by the agent's own participant, so its
    ``avatar_identity`` is the agent's (``wait_for_join`` supports that: it looks at the local
    participant too). But ``aclose`` removes ``avatar_identity`` from the room through the
    server API, which would kick the agent itself (and look like a lost worker to the resume
    logic). This drops the base class's room (``_room``) and its connection listener
    (``_on_connection_state_changed``) first, so ``aclose`` skips the removal and still
    cancels its join watch and metrics listener. Removed by: an ``AvatarSession`` that skips
    the removal when the avatar is the local participant (no upstream issue known).
    """
    room.off("connection_state_changed", session._on_connection_state_changed)
    session._room = None
