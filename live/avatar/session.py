"""``LocalAvatarSession``: the embedded talking face, started like a hosted avatar plugin.

``await avatar.start(agent_session, room=ctx.room)`` before ``agent_session.start(...)``.

- ``in-process`` (default): the session's audio goes into a ``QueueAudioOutput``; an
  ``AvatarRunner`` in this process renders the face and the agent participant itself
  publishes the video and the (lip-synced) audio, like bithuman's local mode. Phoneme
  timings from the local TTS reach the mouth through ``alignment_callback``.
- ``participant``: a second participant joins with a token carrying
  ``lk.publish_on_behalf`` = the agent's identity and publishes for it; the agent streams
  its speech there with ``DataStreamAudioOutput`` (byte streams, ``lk.clear_buffer`` RPC,
  ``lk.playback_started`` / ``lk.playback_finished`` back). Here it runs as a task in this
  process; ``run_avatar_participant`` is what another process would call.

Either way, interruption reaches the generator's ``clear_buffer`` and the agent gets
playback started / finished (interrupted) events from ``AvatarRunner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from livekit import api, rtc
from livekit.agents import AgentSession
from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
from livekit.agents.voice.avatar import AvatarSession, DataStreamAudioOutput, QueueAudioOutput

from live import lk_compat
from live.alignment import PhonemeTiming
from live.avatar.generator import FaceVideoGenerator, FrameInfo
from live.avatar.options import LocalAvatarOptions, build_renderer
from live.avatar.publish import FaceAvatarRunner
from live.avatar.runner import run_avatar_participant

logger = logging.getLogger(__name__)

# A resume waits this long at most for the caller's words to be transcribed...
RESUME_VERDICT_WAIT_S = 2.0
# ...and, words heard, this long for the interruption they cause before resuming anyway.
INTERRUPTION_WAIT_S = 3.0
# The longest a reply stays paused when nothing resumes or interrupts it.
MAX_PAUSE_S = 15.0
# After a resume on the STT's "no words", LiveKit's own resume follows within its VAD's
# silence plus the false-interruption timeout; until then (at most this long) the playing
# reply is still one the caller speaks over.
EARLY_RESUME_WINDOW_S = 2.0


class PausableQueueAudioOutput(QueueAudioOutput):
    """``QueueAudioOutput`` whose playback the session can pause and resume.

    LiveKit pauses the agent's audio output the moment the caller speaks over it and resumes
    it if no words follow (``resume_false_interruption``), instead of waiting for words
    before stopping. The stock queue output cannot pause; the face generator can hold its
    speech, so this one can.

    LiveKit resumes a paused reply on a timer after the caller's speech ends. With
    ``verdict`` (the local STT's ``words_since``) that resume also waits until the
    caller's words are known: a slow transcription must not let the agent resume for a
    moment and then be cut off by the interruption it has not heard yet. Words heard: it
    stays paused for the interruption (which clears the speech), for a while at most. A
    resume with nothing held, and a new reply, are never held back.

    With ``no_words`` (the local STT's ``no_words_since``) and ``resume_chain`` (the
    session's audio output chain, captions included), the reply goes on as soon as the STT
    has heard the caller stop and found no words, without waiting for LiveKit's timer (its
    VAD's 0.55 s of silence plus the 0.2 s timeout: 0.15 to 0.45 s after the verdict in a
    traced run, bench/results/turns-call-intr-trace.md). LiveKit's own resume then finds
    nothing held.
    """

    def __init__(self, *, hold: Callable[[bool], None], holding: Callable[[], bool],
                 sample_rate: int | None = None, wait_playback_start: bool = False) -> None:
        super().__init__(sample_rate=sample_rate, wait_playback_start=wait_playback_start)
        self._hold = hold
        self._holding = holding  # the generator still has audio of the paused reply
        self.verdict: Callable[[float, float], Awaitable[bool | None]] | None = None
        self._resuming: asyncio.Task[None] | None = None
        self._paused = False  # as LiveKit sees it
        self._held = False  # as the generator is
        self._paused_at = 0.0  # monotonic time of the last pause
        self._in_segment = False
        self.no_words: Callable[[float], Awaitable[bool]] | None = None
        # the same, known now: has the speech since the pause been heard, with no words?
        self.heard_no_words: Callable[[float], bool] | None = None
        self.resume_chain: Callable[[], None] | None = None
        self._early: asyncio.Task[None] | None = None
        self._resumed_early_at: float | None = None  # until LiveKit's own resume comes
        self._own_resume = False  # this output is resuming the chain (not LiveKit)

    @property
    def can_pause(self) -> bool:
        return True

    @property
    def held(self) -> bool:
        """A reply is paused (by LiveKit, or still waiting on the verdict to resume)."""
        return self._held

    @property
    def over_caller(self) -> bool:
        """The caller's speech now is speech over the reply: it is paused, or it went on
        early and LiveKit (which still counts the agent as listening) has not resumed yet."""
        return self._held or self._early_window_open()

    def _early_window_open(self) -> bool:
        """The reply went on early, and LiveKit's own resume has not come yet."""
        early = self._resumed_early_at
        return early is not None and time.monotonic() - early < EARLY_RESUME_WINDOW_S

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if not self._in_segment:
            self._in_segment = True
            logger.debug("reply audio to the face")  # a mark for latency traces
            if self._held and not self._paused:
                self._release()  # a new reply LiveKit wants heard: no verdict holds it back
        await super().capture_frame(frame)

    def flush(self) -> None:
        self._in_segment = False
        super().flush()

    def clear_buffer(self) -> None:
        self._cancel_resume()  # the interruption: the held speech goes, nothing resumes
        self._resumed_early_at = None
        self._in_segment = False
        self._held = False  # the generator unpauses when it drops the speech
        super().clear_buffer()

    def pause(self) -> None:
        check = self.heard_no_words
        if self._early_window_open() and check is not None and check(self._paused_at):
            # resumed early: LiveKit's VAD still hears the backchannel's tail and pauses at
            # each of its windows until its silence runs out, but the STT has heard it end
            # without words and nothing new began. The reply plays on; the captions, paused
            # by the chain ahead of this output, go on at the next turn of the loop.
            if self.resume_chain is not None:
                asyncio.get_running_loop().call_soon(self._resume_captions)
            return
        super().pause()
        if self._paused and self._held:
            # LiveKit pauses again at every VAD window of the caller's speech. The first
            # pause dates it: the verdict covers speech from a moment before it. Moved to
            # the last call, the verdict missed the words that paused the reply and let it
            # resume before their interruption came (the caller heard up to 2 s more).
            return
        self._cancel_resume()
        self._paused = self._held = True
        self._paused_at = time.monotonic()
        self._resumed_early_at = None
        self._hold(True)
        logger.debug("reply paused")  # marks for the traces of speech over the agent
        # never held for good: a pause nothing resolves (no resume, no interruption) would
        # leave the face silent for the rest of the call
        self._resuming = asyncio.create_task(self._release_after(MAX_PAUSE_S, "paused"))
        if self.no_words is not None and self.resume_chain is not None:
            self._early = asyncio.create_task(self._resume_on_no_words(self.no_words,
                                                                       self._paused_at))

    def resume(self) -> None:
        super().resume()
        self._paused = False
        if not self._held:
            if not self._own_resume:
                self._resumed_early_at = None  # LiveKit's own resume, after the early one
            return
        logger.debug("reply resume asked", extra={
            "paused_s": round(time.monotonic() - self._paused_at, 3)})
        self._cancel_resume()
        if self.verdict is None or not self._holding():
            self._release()
            return
        self._resuming = asyncio.create_task(self._resume_after(self.verdict))

    async def _resume_after(self, verdict: Callable[[float, float], Awaitable[bool | None]]) -> None:
        if await verdict(self._paused_at, RESUME_VERDICT_WAIT_S):
            # words: the interruption is on its way (it clears the speech and unpauses)
            await self._release_after(INTERRUPTION_WAIT_S, "words over it did not interrupt it")
            return
        self._release()

    def _resume_chain(self) -> None:
        if self.resume_chain is None:
            return
        self._own_resume = True
        try:
            self.resume_chain()
        finally:
            self._own_resume = False

    def _resume_captions(self) -> None:
        if self._resumed_early_at is not None and not self._held:
            self._resume_chain()  # nothing is held here: only the chain ahead resumes

    async def _resume_on_no_words(self, no_words: Callable[[float], Awaitable[bool]],
                                  paused_at: float) -> None:
        if not await no_words(paused_at):
            return  # words: the interruption is on its way
        if self._held and self._paused and self._paused_at == paused_at and self.resume_chain:
            logger.debug("reply resumed early: no words over it", extra={
                "paused_s": round(time.monotonic() - paused_at, 3)})
            self._resumed_early_at = time.monotonic()
            self._resume_chain()  # the captions' synchroniser, then this output

    async def _release_after(self, seconds: float, why: str) -> None:
        await asyncio.sleep(seconds)
        logger.warning("agent's reply held for %.0f s (%s); resuming", seconds, why)
        self._release()

    def _release(self) -> None:
        self._cancel_resume()
        if self._held:
            logger.debug("reply released", extra={
                "paused_s": round(time.monotonic() - self._paused_at, 3)})
        self._held = False
        self._hold(False)

    def _cancel_resume(self) -> None:
        for task in (self._resuming, self._early):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()
        self._resuming = self._early = None


class LocalAvatarSession(AvatarSession):
    """The local avatar, a LiveKit ``AvatarSession``: ``start`` once per agent session.

    The base class gives what the hosted plugins get: ``wait_for_join`` (the avatar's video
    is published: by the agent itself in-process, by the avatar participant otherwise), an
    ``AvatarMetrics`` when it joins and per reply, ``aclose`` at job shutdown and, in
    participant mode, removing the avatar participant from the room.
    """

    def __init__(
        self,
        *,
        options: LocalAvatarOptions | None = None,
        livekit_url: str | None = None,
        api_key: str | None = None,
        api_secret: str | None = None,
        frame_listener: Callable[[FrameInfo], None] | None = None,
    ) -> None:
        super().__init__()
        self._opts = options or LocalAvatarOptions()
        self._url = livekit_url
        self._key = api_key
        self._secret = api_secret
        self._listener = frame_listener
        self._gen: FaceVideoGenerator | None = None
        self._runner: FaceAvatarRunner | None = None
        self._participant_task: asyncio.Task[None] | None = None
        self._audio: PausableQueueAudioOutput | None = None
        self._verdict: Callable[[float, float], Awaitable[bool | None]] | None = None
        self._no_words: Callable[[float], Awaitable[bool]] | None = None
        self._heard_no_words: Callable[[float], bool] | None = None
        self._agent_session: AgentSession[Any] | None = None
        self._publisher = ""  # in-process: the agent's identity, once started
        self._closed = False
        if self._opts.mode == "participant" and not (livekit_url and api_key and api_secret):
            raise ValueError("participant mode needs livekit_url, api_key and api_secret")

    @property
    def options(self) -> LocalAvatarOptions:
        return self._opts

    @property
    def in_process(self) -> bool:
        return self._opts.mode != "participant"

    @property
    def avatar_identity(self) -> str:
        """Who publishes the face: the avatar participant, or in-process the agent itself
        (empty before ``start``)."""
        return self._publisher if self.in_process else self._opts.identity

    @property
    def provider(self) -> str:
        return "local"

    def reply_held(self) -> bool:
        """Is the caller's speech now speech over a reply (in-process only)? The reply is
        paused, or went on early on the STT's "no words" while LiveKit, which has not
        resumed it yet, still counts the agent as listening."""
        return self._audio is not None and self._audio.over_caller

    def wait_for_words_before_resuming(
        self, verdict: Callable[[float, float], Awaitable[bool | None]]
    ) -> None:
        """A paused reply resumes once ``verdict`` (the local STT's ``words_since``)
        says the caller spoke no words (see ``PausableQueueAudioOutput``)."""
        self._verdict = verdict
        if self._audio is not None:
            self._audio.verdict = verdict

    def resume_when_no_words(self, no_words: Callable[[float], Awaitable[bool]],
                             heard_no_words: Callable[[float], bool]) -> None:
        """A paused reply goes on as soon as ``no_words(paused_at)`` (the local STT's
        ``no_words_since``) says the caller stopped without words, through the agent
        session's audio output (so the captions go on with it); ``heard_no_words`` (its
        ``heard_no_words``) keeps it going while LiveKit's VAD still hears that speech."""
        self._no_words = no_words
        self._heard_no_words = heard_no_words
        if self._audio is not None:
            self._link_early_resume(self._audio)

    def _link_early_resume(self, audio: PausableQueueAudioOutput) -> None:
        session = self._agent_session
        if self._no_words is None or session is None:
            return

        def resume_chain() -> None:
            head = session.output.audio
            (head or audio).resume()

        audio.no_words = self._no_words
        audio.heard_no_words = self._heard_no_words
        audio.resume_chain = resume_chain

    def on_sound_gap(self, callback: Callable[[float], None]) -> None:
        """``callback(seconds)`` for each silence inside a reply that the caller heard
        because the face or the voice fell behind (in-process only: a face in another
        participant cannot say)."""
        if self._gen is not None:
            self._gen.on_gap = callback

    def alignment_callback(
        self, timings: list[PhonemeTiming], num_samples: int, sample_rate: int
    ) -> None:
        """``live.alignment.AlignmentCallback`` for the local TTS (``on_alignment=``).

        In-process only; before ``start`` and in participant mode the timings are dropped
        and the mouth follows the audio.
        """
        if self._gen is not None:
            self._gen.alignment_callback(timings, num_samples, sample_rate)

    async def start(self, agent_session: AgentSession, room: rtc.Room) -> None:
        if self.in_process:
            self._publisher = room.local_participant.identity
        await super().start(agent_session, room)
        if self.in_process:
            await self._start_in_process(agent_session, room)
        else:
            await self._start_participant(agent_session, room)

    async def _start_in_process(self, agent_session: AgentSession, room: rtc.Room) -> None:
        opts = self._opts
        self._gen = FaceVideoGenerator(
            renderer=build_renderer(opts), options=opts.avatar_options(), seed=opts.seed,
            frame_listener=self._listener,
        )
        # playback starts when the avatar plays the first chunk (FaceAvatarRunner says when),
        # not when the agent queues it: captions and interrupted replies are timed from it
        gen = self._gen
        audio = PausableQueueAudioOutput(
            hold=lambda held: gen.pause() if held else gen.resume(),
            holding=lambda: gen.holding_audio,
            sample_rate=opts.sample_rate, wait_playback_start=True,
        )
        audio.verdict = self._verdict
        self._audio = audio
        self._agent_session = agent_session
        self._link_early_resume(audio)
        self._runner = FaceAvatarRunner(
            room, audio_recv=audio, video_gen=self._gen, options=opts.avatar_options(),
            video_lead=opts.mouth_lead,
        )
        self._gen.set_av_sync(self._runner.av_sync)
        await self._runner.start()
        agent_session.output.replace_audio_tail(audio)
        logger.info("local avatar started in-process", extra={"room": room.name})

    def participant_token(self, room: rtc.Room) -> str:
        """Token for the avatar participant: kind agent, publishing for the local agent."""
        assert self._key and self._secret
        return (
            api.AccessToken(self._key, self._secret)
            .with_kind("agent")
            .with_identity(self._opts.identity)
            .with_name(self._opts.name)
            .with_ttl(timedelta(hours=6))
            .with_grants(api.VideoGrants(room_join=True, room=room.name))
            .with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: room.local_participant.identity})
            .to_jwt()
        )

    async def _start_participant(self, agent_session: AgentSession, room: rtc.Room) -> None:
        assert self._url
        token = self.participant_token(room)
        self._participant_task = asyncio.create_task(
            run_avatar_participant(
                self._url, token, options=self._opts, frame_listener=self._listener,
            ),
            name="local-avatar-participant",
        )
        agent_session.output.replace_audio_tail(
            DataStreamAudioOutput(
                room,
                destination_identity=self._opts.identity,
                sample_rate=self._opts.sample_rate,
                wait_remote_track=rtc.TrackKind.KIND_VIDEO,
                wait_playback_start=True,
            )
        )
        logger.info("local avatar participant launched",
                    extra={"room": room.name, "identity": self._opts.identity})

    async def wait_for_join(self, *, timeout: float | None = 30.0) -> None:
        """Until the face's video is published (``asyncio.TimeoutError`` after ``timeout``).

        In participant mode a participant that fails to start raises its error at once
        instead of running out the timeout.
        """
        task = self._participant_task
        if task is None:
            await super().wait_for_join(timeout=timeout)
            return
        joined = asyncio.ensure_future(super().wait_for_join(timeout=timeout))
        try:
            await asyncio.wait({joined, task}, return_when=asyncio.FIRST_COMPLETED)
            if not joined.done():
                task.result()  # raises what the participant failed with
                raise RuntimeError("avatar participant ended before it joined")
            joined.result()
        finally:
            joined.cancel()

    async def aclose(self) -> None:
        """Idempotent: the job's shutdown runs it, and so may the worker or a fallback."""
        if self._closed:
            return
        self._closed = True
        if self._runner is not None:
            await self._runner.aclose()
            self._runner = None
        if self._gen is not None:
            await self._gen.aclose()
            self._gen = None
        room = self._room
        if self.in_process and room is not None:
            lk_compat.detach_self_published_avatar(self, room)
        await super().aclose()  # participant mode: removes the avatar from the room
        if self._participant_task is not None:
            self._participant_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._participant_task
            self._participant_task = None
