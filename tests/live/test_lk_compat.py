"""One test per LiveKit Agents internal that ``live.lk_compat`` uses.

Each fails with a message naming the internal when an upgrade changed it: then read the new
LiveKit source, fix the function in ``live/lk_compat.py`` (or drop it for the public API that
replaced it) and update the test. No server is needed: the objects are built on an unconnected
``rtc.Room``.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from importlib.metadata import version
from typing import Any

import aiohttp
import pytest
from livekit import rtc
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS
from livekit.agents.voice.avatar import (
    AudioSegmentEnd,
    AvatarOptions,
    AvatarRunner,
    AvatarSession,
    DataStreamAudioOutput,
    DataStreamAudioReceiver,
    VideoGenerator,
)
from livekit.agents.voice.io import AudioOutput, AudioOutputCapabilities
from livekit.agents.voice.room_io import AudioOutputOptions

from live import lk_compat

pytestmark = pytest.mark.unit


def changed(internal: str, detail: str) -> str:
    return (
        f"LiveKit internal {internal} changed (livekit-agents {version('livekit-agents')}, read "
        f"at {lk_compat.LIVEKIT_AGENTS_READ_AT}): {detail}. Re-read it and update live/lk_compat.py."
    )


def params(fn: Any) -> set[str]:
    return set(inspect.signature(fn).parameters)


class _Sink(AudioOutput):
    """The smallest real audio output: counts segments like any LiveKit sink."""

    def __init__(self) -> None:
        super().__init__(label="sink", capabilities=AudioOutputCapabilities(pause=False))

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)

    def flush(self) -> None:
        super().flush()

    def clear_buffer(self) -> None:
        pass


def _frame() -> rtc.AudioFrame:
    return rtc.AudioFrame(b"\0\0" * 480, 48000, 1, 480)


def test_livekit_agents_is_the_version_read() -> None:
    """Not an internal: a reminder that an upgrade means reading lk_compat again."""
    installed = version("livekit-agents")
    assert installed == lk_compat.LIVEKIT_AGENTS_READ_AT, (
        f"livekit-agents {installed} is installed; live/lk_compat.py was read at "
        f"{lk_compat.LIVEKIT_AGENTS_READ_AT}: run these tests, fix what fails, then bump "
        "LIVEKIT_AGENTS_READ_AT"
    )


async def test_pending_playback_count_follows_captured_and_finished_segments() -> None:
    assert isinstance(inspect.getattr_static(AudioOutput, "_pending_playback_count", None),
                      property), changed("AudioOutput._pending_playback_count", "no longer a property")
    sink = _Sink()
    assert lk_compat.pending_playback_count(sink) == 0
    for _ in range(2):
        await sink.capture_frame(_frame())
        sink.flush()
    assert lk_compat.pending_playback_count(sink) == 2, changed(
        "AudioOutput._pending_playback_count", "does not count captured segments"
    )
    sink.on_playback_finished(playback_position=0.01, interrupted=False)
    assert lk_compat.pending_playback_count(sink) == 1, changed(
        "AudioOutput._pending_playback_count", "does not drop finished segments"
    )


async def test_datastream_destination_is_the_avatar_identity() -> None:
    out = DataStreamAudioOutput(rtc.Room(), destination_identity="avatar-worker")
    assert hasattr(out, "_destination_identity"), changed(
        "DataStreamAudioOutput._destination_identity", "attribute is gone"
    )
    assert lk_compat.datastream_destination(out) == "avatar-worker", changed(
        "DataStreamAudioOutput._destination_identity", "no longer the destination identity"
    )


async def test_silenced_clear_buffer_sends_nothing() -> None:
    async def with_a_pending_segment() -> DataStreamAudioOutput:
        out = DataStreamAudioOutput(rtc.Room(), destination_identity="avatar-worker")
        out._started = True  # as after the avatar joined
        await AudioOutput.capture_frame(out, _frame())  # counts a segment, sends nothing
        return out

    control = await with_a_pending_segment()
    control.clear_buffer()
    task = getattr(control, "_clear_buffer_atask", None)
    assert task is not None, changed(
        "DataStreamAudioOutput.clear_buffer", "no longer starts its clear-buffer RPC task"
    )
    task.cancel()
    out = await with_a_pending_segment()
    lk_compat.silence_clear_buffer(out)
    assert out.clear_buffer() is None
    assert out._clear_buffer_atask is None, changed(
        "DataStreamAudioOutput.clear_buffer", "the replaced method still started the RPC task"
    )


async def test_room_audio_output_is_built_like_roomio_builds_it() -> None:
    expected = {"room", "sample_rate", "num_channels", "track_publish_options", "track_name"}
    got = params(lk_compat.RoomAudioOutput.__init__) - {"self"}
    assert got == expected, changed("room_io._ParticipantAudioOutput.__init__", f"takes {sorted(got)}")
    options = AudioOutputOptions(sample_rate=24000, num_channels=1)
    out = lk_compat.new_room_audio_output(rtc.Room(), options, track_name="roomio_audio")
    assert isinstance(out, AudioOutput)
    assert out.sample_rate == 24000
    assert inspect.iscoroutinefunction(type(out).start), changed(
        "room_io._ParticipantAudioOutput.start", "no longer a coroutine that publishes"
    )
    assert hasattr(out, "_publication"), changed(
        "room_io._ParticipantAudioOutput._publication", "attribute is gone"
    )
    assert lk_compat.room_audio_publication(out) is None  # nothing published yet
    await out.aclose()


async def test_drop_queued_streams_empties_the_receivers_queue() -> None:
    receiver = DataStreamAudioReceiver(rtc.Room(), sender_identity="agent")
    readers = getattr(receiver, "_stream_readers", None)
    assert isinstance(readers, list), changed(
        "DataStreamAudioReceiver._stream_readers", f"is {type(readers).__name__}, not a list"
    )
    readers.extend([object(), object()])
    assert lk_compat.drop_queued_streams(receiver) == 2
    assert receiver._stream_readers == []
    assert "self._stream_readers.pop(0)" in inspect.getsource(receiver._recv_task), changed(
        "DataStreamAudioReceiver._recv_task", "no longer takes readers from _stream_readers"
    )


class _IdleVideo(VideoGenerator):
    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        pass

    def clear_buffer(self) -> None:
        pass

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return
        yield


def _runner(**kwargs: Any) -> AvatarRunner:
    options = AvatarOptions(video_width=64, video_height=64, video_fps=25,
                            audio_sample_rate=24000, audio_channels=1)
    room = rtc.Room()
    return AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=_IdleVideo(),
                        options=options, **kwargs)


async def _close_unstarted(runner: AvatarRunner, sync: rtc.AVSynchronizer) -> None:
    """Release the runner's native sources (``AvatarRunner.aclose`` needs a started runner)."""
    await sync.aclose()
    for source in lk_compat.runner_media_sources(runner):
        await source.aclose()


async def test_runner_queue_size_is_the_private_keyword() -> None:
    assert "_queue_size_ms" in params(AvatarRunner.__init__), changed(
        "AvatarRunner(_queue_size_ms=)", "keyword is gone"
    )
    runner = _runner(**lk_compat.runner_queue_kwargs(60))
    assert runner._queue_size_ms == 60, changed("AvatarRunner(_queue_size_ms=)", "not kept")
    await _close_unstarted(runner, runner.av_sync)
    assert "queue_size_ms=self._queue_size_ms" in inspect.getsource(AvatarRunner.__init__), changed(
        "AvatarRunner(_queue_size_ms=)", "no longer sizes the audio source's queue"
    )


async def test_runner_sources_receiver_and_synchronizer_can_be_taken_over() -> None:
    runner = _runner()
    audio, video = lk_compat.runner_media_sources(runner)
    assert isinstance(audio, rtc.AudioSource) and isinstance(video, rtc.VideoSource), changed(
        "AvatarRunner._audio_source/_video_source", "not the runner's media sources"
    )
    assert isinstance(lk_compat.runner_audio_receiver(runner), DataStreamAudioReceiver), changed(
        "AvatarRunner._audio_recv", "not the receiver given to the runner"
    )
    stock = runner.av_sync
    for name in ("_stopped", "_capture_video_task"):
        assert hasattr(stock, name), changed(f"rtc.AVSynchronizer.{name}", "attribute is gone")
    replacement = object()
    lk_compat.replace_runner_synchronizer(runner, replacement)
    assert runner.av_sync is replacement, changed(
        "AvatarRunner._av_sync", "the av_sync property no longer returns it"
    )
    assert "self._av_sync.push(frame)" in inspect.getsource(AvatarRunner._forward_video), changed(
        "AvatarRunner._forward_video", "no longer pushes frames through self._av_sync"
    )
    await asyncio.sleep(0)  # let the stock capture task see its cancellation
    assert stock._capture_video_task.cancelled() or stock._capture_video_task.done()
    await _close_unstarted(runner, stock)


def test_publish_track_copy_matches_the_installed_runner() -> None:
    for name in ("_lock", "_room_connected_fut", "_room", "_audio_publication",
                 "_video_publication"):
        assert name in inspect.getsource(AvatarRunner.__init__), changed(
            f"AvatarRunner.{name}", "no longer set up by the runner"
        )
    assert "await self._publish_track()" in inspect.getsource(AvatarRunner), changed(
        "AvatarRunner._publish_track", "the runner no longer publishes through this hook"
    )
    assert lk_compat.upstream_publish_track_digest() == lk_compat.UPSTREAM_PUBLISH_TRACK_SHA256, changed(
        "AvatarRunner._publish_track",
        "its source differs from the one lk_compat.publish_runner_tracks copies",
    )


async def test_assemblyai_stream_is_built_from_the_stts_private_options() -> None:
    from livekit.plugins import assemblyai
    from livekit.plugins.assemblyai.stt import SpeechStream

    expected = {"stt", "opts", "conn_options", "api_key", "http_session", "base_url"}
    got = params(SpeechStream.__init__) - {"self"}
    assert got == expected, changed("assemblyai SpeechStream.__init__", f"takes {sorted(got)}")
    assert inspect.iscoroutinefunction(SpeechStream._connect_ws), changed(
        "assemblyai SpeechStream._connect_ws", "gone or not a coroutine"
    )
    assert "await self._connect_ws()" in inspect.getsource(SpeechStream._run), changed(
        "assemblyai SpeechStream._connect_ws", "_run no longer connects through it"
    )
    async with aiohttp.ClientSession() as http:
        stt = assemblyai.STT(api_key="not-a-key", http_session=http)
        for name in ("_opts", "_api_key", "_base_url", "_streams"):
            assert hasattr(stt, name), changed(f"assemblyai.STT.{name}", "attribute is gone")
        calls: list[str] = []

        async def guard(connect: Any) -> aiohttp.ClientWebSocketResponse:
            calls.append(connect.__name__)
            raise ConnectionRefusedError("guarded")

        stream = lk_compat.assemblyai_guarded_stream(
            stt, conn_options=DEFAULT_API_CONNECT_OPTIONS, connect_guard=guard
        )
        assert stream in stt._streams
        with pytest.raises(ConnectionRefusedError, match="guarded"):
            await stream._connect_ws()
        assert calls == ["_connect_ws"]  # the guard was handed the plugin's own connect
        await stream.aclose()


def test_agent_server_has_a_process_pool_that_says_when_a_process_closes() -> None:
    """``on_job_process_closed``: the pool ``AgentServer.run`` creates as ``_proc_pool``,
    and its ``process_closed`` event with the process."""
    import typing

    from livekit.agents import AgentServer
    from livekit.agents.ipc import proc_pool

    run_src = inspect.getsource(AgentServer.run)
    assert "self._proc_pool = ipc.proc_pool.ProcPool(" in run_src, changed(
        "AgentServer._proc_pool", "run() no longer creates the pool under that name")
    events = typing.get_args(proc_pool.EventTypes)
    assert "process_closed" in events, changed("ProcPool 'process_closed'", f"events are {events}")
    assert 'self.emit("process_closed", proc)' in inspect.getsource(proc_pool.ProcPool), changed(
        "ProcPool 'process_closed'", "no longer emitted with the process")


async def test_the_pool_watcher_attaches_to_the_pool_and_passes_the_process() -> None:
    from livekit.agents import utils

    class Pool(utils.EventEmitter[str]):
        pass

    class Server:
        _proc_pool = Pool()

    closed: list[object] = []
    assert lk_compat.on_job_process_closed(Server(), closed.append)  # type: ignore[arg-type]
    Server._proc_pool.emit("process_closed", "proc")
    assert closed == ["proc"]
    assert not lk_compat.on_job_process_closed(object(), closed.append)  # type: ignore[arg-type]


async def test_agent_server_can_send_its_status_now() -> None:
    """``report_load_now``: ``_refresh_worker_load`` then ``_update_worker_status``, both
    coroutines taking no arguments."""
    from livekit.agents import AgentServer

    for name in ("_refresh_worker_load", "_update_worker_status"):
        fn = getattr(AgentServer, name, None)
        assert fn is not None and inspect.iscoroutinefunction(fn), changed(
            f"AgentServer.{name}", "missing or no longer a coroutine")
        assert params(fn) == {"self"}, changed(f"AgentServer.{name}", f"takes {params(fn)}")

    calls: list[str] = []

    class Server:
        async def _refresh_worker_load(self) -> None:
            calls.append("refresh")

        async def _update_worker_status(self) -> None:
            calls.append("update")

    assert await lk_compat.report_load_now(Server())  # type: ignore[arg-type]
    assert calls == ["refresh", "update"]


@pytest.mark.parametrize(("module", "cls", "method", "expected"), [
    ("livekit.agents.llm.fallback_adapter", "FallbackLLMStream", "_try_generate",
     {"self", "llm", "check_recovery"}),
    ("livekit.agents.tts.fallback_adapter", "FallbackSynthesizeStream", "_try_synthesize",
     {"self", "tts", "input_ch", "conn_options", "recovering"}),
    ("livekit.agents.tts.fallback_adapter", "FallbackChunkedStream", "_try_synthesize",
     {"self", "tts", "recovering"}),
])
def test_fallback_streams_keep_the_hooks_our_fallbacks_override(
    module: str, cls: str, method: str, expected: set[str]
) -> None:
    """``live/providers/fallback.py`` subclasses LiveKit's fallback streams (answering within
    the turn a provider failed in) and overrides these protected hooks."""
    import importlib

    klass = getattr(importlib.import_module(module), cls)
    fn = getattr(klass, method, None)
    assert fn is not None, changed(f"{cls}.{method}", "missing")
    assert expected <= params(fn), changed(f"{cls}.{method}", f"takes {params(fn)}")


def test_fallback_adapters_keep_the_state_our_fallbacks_read() -> None:
    """The TTS fallback reads the adapter's members, their status and the tokens pushed so
    far (to say the rest of a sentence in the fallback voice); the STT fallback wraps the
    members it replays to."""
    from livekit.agents.llm.fallback_adapter import FallbackAdapter as LLMAdapter
    from livekit.agents.stt.fallback_adapter import FallbackAdapter as STTAdapter
    from livekit.agents.tts.fallback_adapter import FallbackAdapter as TTSAdapter
    from livekit.agents.tts.fallback_adapter import FallbackSynthesizeStream

    for klass, attrs in ((TTSAdapter, ("self._tts_instances", "self._status")),
                         (STTAdapter, ("self._stt_instances",)),
                         (LLMAdapter, ("self._status",)),
                         (FallbackSynthesizeStream, ("self._pushed_tokens",))):
        src = inspect.getsource(klass)
        for attr in attrs:
            assert f"{attr}" in src, changed(f"{klass.__name__}.{attr[5:]}", "no longer set")
    for klass in (TTSAdapter, LLMAdapter):
        stream_mod = inspect.getmodule(klass)
        assert "def _try_recovery(self" in inspect.getsource(stream_mod), changed(  # type: ignore[arg-type]
            f"{klass.__module__} _try_recovery", "missing")


class _SelfPublished(AvatarSession):
    @property
    def avatar_identity(self) -> str:
        return "agent"


async def test_a_self_published_avatar_closes_without_removing_the_agent() -> None:
    from livekit.agents import AgentSession

    close_src = inspect.getsource(AvatarSession.aclose)
    assert "remove_participant" in close_src and "self._room" in close_src, changed(
        "AvatarSession.aclose", "no longer removes avatar_identity when it has a room: "
        "detach_self_published_avatar may be dropped"
    )
    room = rtc.Room()  # unconnected: start listens for the connection
    session = _SelfPublished()
    await session.start(AgentSession(), room)
    assert getattr(session, "_room", None) is room, changed("AvatarSession._room", "not the room")
    assert callable(getattr(session, "_on_connection_state_changed", None)), changed(
        "AvatarSession._on_connection_state_changed", "method is gone"
    )
    lk_compat.detach_self_published_avatar(session, room)
    assert session._room is None
    # its listener is off the room: a connection after close finds no half-closed session
    room.emit("connection_state_changed", rtc.ConnectionState.CONN_CONNECTED)
    assert session._wait_avatar_join_task is None, changed(
        "AvatarSession._on_connection_state_changed", "still attached after detaching"
    )
    await session.aclose()


async def test_runner_playback_position_counts_pushed_audio_and_can_be_rewound() -> None:
    forward = inspect.getsource(AvatarRunner._forward_video)
    assert "self._playback_position += frame.duration" in forward, changed(
        "AvatarRunner._playback_position", "no longer counts the audio pushed"
    )
    assert "playback_position=self._playback_position" in inspect.getsource(
        AvatarRunner._on_clear_buffer
    ), changed("AvatarRunner._on_clear_buffer", "no longer reports the count on interruption")
    on_clear = inspect.getsource(AvatarRunner._on_clear_buffer)
    assert 0 <= on_clear.find("self._video_gen.clear_buffer()") < on_clear.find(
        "notify_playback_finished"
    ), changed("AvatarRunner._on_clear_buffer", "no longer clears the generator before reporting")
    runner = _runner()
    runner._playback_position = 1.5
    lk_compat.rewind_runner_playback(runner, 0.2)
    assert runner._playback_position == pytest.approx(1.3)
    lk_compat.rewind_runner_playback(runner, 5.0)
    assert runner._playback_position == 0.0
    await _close_unstarted(runner, runner.av_sync)


def test_played_text_keeps_the_words_whose_sound_played() -> None:
    text = "Once upon a time, there lived a keeper."
    # a character a tenth of a second: the timings the function is handed
    def at(t: float) -> float:
        return t * 10

    assert lk_compat.played_text(text, at, 0.0) == ""
    assert lk_compat.played_text(text, at, 0.5) == "Once"  # "Once " is 5 characters
    assert lk_compat.played_text(text, at, 0.6) == "Once"  # "u" of "upon": not heard yet
    assert lk_compat.played_text(text, at, 0.8) == "Once upon"  # most of "upon" played
    assert lk_compat.played_text(text, at, 100.0) == text  # played to the end


async def test_an_interrupted_reply_keeps_the_words_its_sound_played() -> None:
    from livekit.agents.types import TimedString
    from livekit.agents.voice.io import TextOutput
    from livekit.agents.voice.transcription.synchronizer import TranscriptSynchronizer

    class _Captions(TextOutput):
        def __init__(self) -> None:
            super().__init__(label="captions", next_in_chain=None)

        async def capture_text(self, text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    sink = _Sink()
    sync = TranscriptSynchronizer(next_in_chain_audio=sink, next_in_chain_text=_Captions())
    out = sync.audio_output
    assert lk_compat.keep_played_words(out)
    assert not lk_compat.keep_played_words(sink)  # not a synchronised output: left alone
    # a reply of five words, 0.4 s each, as a voice times them; 2 s of its sound pushed
    words = ["The ", "story ", "of ", "a ", "lighthouse."]
    for i, w in enumerate(words):
        await sync.text_output.capture_text(TimedString(w, start_time=0.4 * i, end_time=0.4 * i + 0.35))
    sync.text_output.flush()
    for _ in range(20):
        await out.capture_frame(rtc.AudioFrame(bytes(3200), 16000, 1, 1600))
    out.flush()
    sink.on_playback_started(created_at=asyncio.get_running_loop().time())
    # interrupted after 1.0 s of sound played (the captions' wall clock says nearly nothing yet)
    sink.on_playback_finished(playback_position=1.0, interrupted=True)
    ev = await asyncio.wait_for(out.wait_for_playout(), 5)
    assert ev.synchronized_transcript == "The story of", changed(
        "_SyncedAudioOutput / _SegmentSynchronizerImpl",
        f"the interrupted reply kept {ev.synchronized_transcript!r}, not the words played by 1.0 s",
    )
    await sync.aclose()


async def test_captions_wait_out_a_silence_inside_the_reply() -> None:
    from livekit.agents.types import TimedString
    from livekit.agents.voice.io import TextOutput
    from livekit.agents.voice.transcription.synchronizer import TranscriptSynchronizer

    shown: list[tuple[float, str]] = []
    last_word = asyncio.Event()

    class _Captions(TextOutput):
        def __init__(self) -> None:
            super().__init__(label="captions", next_in_chain=None)

        async def capture_text(self, text: str) -> None:
            shown.append((time.time(), str(text)))
            if "four" in str(text):
                last_word.set()

        def flush(self) -> None:
            pass

    sink = _Sink()
    sync = TranscriptSynchronizer(next_in_chain_audio=sink, next_in_chain_text=_Captions())
    out = sync.audio_output
    assert not lk_compat.delay_captions(out, 1.5)  # nothing playing: nothing to hold
    assert not lk_compat.delay_captions(sink, 1.5)  # no synchroniser in the chain
    # four words, 0.3 s each as the voice times them; all 1.2 s of their sound is pushed
    for i, w in enumerate(["One ", "two ", "three ", "four."]):
        await sync.text_output.capture_text(TimedString(w, start_time=0.3 * i, end_time=0.3 * i + 0.28))
    sync.text_output.flush()
    for _ in range(12):
        await out.capture_frame(rtc.AudioFrame(bytes(3200), 16000, 1, 1600))
    out.flush()
    started = time.time()
    sink.on_playback_started(created_at=started)
    # the sound stalled 1.5 s after it began: the caller hears "four." 2.4 s in, not 0.9 s
    assert lk_compat.delay_captions(out, 1.5)
    await asyncio.wait_for(last_word.wait(), 15)
    at = next(t for t, w in shown if "four" in w) - started
    # undelayed, LiveKit shows it about 1.1 s in; a busy machine only makes it later
    assert at >= 2.2, changed(
        "_SegmentSynchronizerImpl._paused_duration",
        f"the last caption came {at:.2f} s in although the sound stalled 1.5 s",
    )
    await sync.aclose()
