"""Local text to speech: Piper (natural, 22.05 kHz) and espeak-ng (tiny, robotic fallback).

``LocalTTS`` streams sentence by sentence: LLM text goes through LiveKit's sentence tokenizer
and each finished sentence is synthesized at once, so the first audio follows the first
sentence instead of the whole answer (the first pieces are cut shorter still, at clauses:
``LeadPhrases``). Before it pushes a sentence's audio it calls the
optional ``on_alignment`` callback with Piper's per-phoneme timings (see
:mod:`live.alignment`), which drive the local avatar's mouth.

``EspeakTTS`` is non-streaming; AgentSession wraps it in ``tts.StreamAdapter`` (also
sentence-level). It runs on the espeak-ng library that piper-tts embeds, or on the system's
``libespeak-ng`` when piper-tts is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from livekit.agents import tokenize, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice.io import TimedString

from config.catalog import PIPER_VOICES
from config.settings import TTSSettings
from engines.espeak import EspeakEngine, get_espeak
from engines.piper import PiperEngine, SpeechChunk, get_piper, piece_ends
from live.alignment import AlignmentCallback, PhonemeTiming, SentenceWords
from live.providers.registry import ProviderContext, register

logger = logging.getLogger(__name__)

_SKIP_PHONEMES = frozenset({"^", "$"})  # Piper's sentence start/end markers (silence)
ESPEAK_DEFAULT_VOICE = "en-us"


def phoneme_timings(chunk: SpeechChunk, sample_rate: int) -> list[PhonemeTiming]:
    """Piper's per-phoneme sample counts -> timings relative to the chunk start."""
    out: list[PhonemeTiming] = []
    pos = 0
    for phoneme, samples in chunk.phonemes:
        if phoneme not in _SKIP_PHONEMES:
            out.append(PhonemeTiming(phoneme, pos / sample_rate, samples / sample_rate))
        pos += samples
    return out


# A new answer's first step goes after the steps of sessions whose queued audio runs out
# within this time (see DeadlineExecutor): a step cannot be interrupted, and a long sentence's
# front pass (~0.2 s) would otherwise outlast another session's first stretch (186 ms).
# Alone on the voice, a stream's steps run at once whatever their deadline.
FIRST_AUDIO_SLACK_SECONDS = 0.5


class PlaybackClock:
    """When this stream's audio, played from its first chunk on, will have run out."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._seconds = 0.0

    def deadline(self) -> float:
        if self._started is None:
            return time.perf_counter() + FIRST_AUDIO_SLACK_SECONDS
        return self._started + self._seconds

    def played(self, seconds: float) -> None:
        if self._started is None:
            self._started = time.perf_counter()
        self._seconds += seconds


async def _piper_chunks(
    engine: PiperEngine, text: str, clock: PlaybackClock
) -> AsyncIterator[SpeechChunk]:
    """Chunks of ``text``, each step synthesized on Piper's thread by its stream's deadline.

    The next step is queued before the current one ends: the model thread takes its next job
    as soon as a step finishes, before this coroutine could queue one, and another session's
    long step would slip in ahead of ours while our queued audio runs out.
    """
    it = engine.iter_sync(text)
    floor = clock.deadline()

    def queue_step() -> asyncio.Future[SpeechChunk | None]:
        # Never earlier than the step queued before it: both advance one iterator, and once
        # the first chunk starts the clock, its real deadline can fall before the pre-start
        # estimate. A model thread slow to take its next step would then run the later step
        # first, and the sentence would end a chunk early (the chunk lost, its timings kept).
        nonlocal floor
        floor = max(floor, clock.deadline())
        return engine.executor.submit(next, it, None, deadline=floor)

    step = queue_step()
    try:
        while True:
            following = queue_step()
            chunk = await step
            step = following
            if chunk is None:
                return
            clock.played(chunk.num_samples / engine.sample_rate)
            yield chunk
    finally:
        step.cancel()  # the step queued ahead (or one left by a closed stream)


def _notify(callback: AlignmentCallback | None, chunk: SpeechChunk, sample_rate: int) -> None:
    """Announce a sentence's timings once, before its first chunk (covering all its chunks)."""
    if callback is None or chunk.timed_samples == 0:
        return
    try:
        callback(phoneme_timings(chunk, sample_rate), chunk.timed_samples, sample_rate)
    except Exception:  # the avatar's problem must not silence the agent
        logger.exception("alignment callback failed")


class _Timeline:
    """Where a chunk will play, in seconds from the playback's start.

    Audio plays as it comes: a chunk ready later than the audio before it runs out (Piper
    slower than real time, on a loaded machine) plays after a gap, and its words are timed
    after that gap too, or the captions (and an interrupted reply's text) run ahead of
    the sound.
    """

    def __init__(self) -> None:
        self._t0: float | None = None

    def at(self, audio_position: float) -> float:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        return max(audio_position, now - self._t0)


def _push_words(emitter: tts.AudioEmitter, words: SentenceWords, chunk: SpeechChunk,
                sample_rate: int, position: float) -> None:
    """Word timings for the captions, sent with the audio they are spoken in.

    A sentence's first chunk carries its phonemes: its words go out timed from them. Without
    phoneme timings (an engine without alignments) the words go out at the sentence start.
    """
    if chunk.phonemes:
        timed = words.next_sentence(phoneme_timings(chunk, sample_rate), position)
        emitter.push_timed_transcript(
            [TimedString(text=w, start_time=s, end_time=e) for w, s, e in timed]
        )
    elif chunk.span_samples != 0:  # a sentence's first chunk, but no timings
        _push_rest(emitter, words, position)


def _push_rest(emitter: tts.AudioEmitter, words: SentenceWords, position: float) -> None:
    rest = words.rest()
    if rest:
        emitter.push_timed_transcript(TimedString(text="".join(rest), start_time=position))


class LeadPhrases:
    """The reply's first words, cut at sentence ends and clause marks until it is well ahead.

    The reply's first audio waits for its first synthesized piece; a whole first sentence
    ("The story of a lighthouse keeper is one that has been passed down for generations.")
    costs the small LLM half a second more than its first clause. So the pieces end at a
    ``.!?`` (any length: "Hi!" goes at once) or at ``,;:`` after ``MIN_CLAUSE_WORDS`` words.
    The first piece is cut sooner still, since the caller waits on it and nothing plays
    before it: at a clause mark after ``first_clause_words`` ("Sure," "No,"), or, in a
    sentence with no mark yet, before a joining word ("and", "because", "to"...) once
    ``first_join_words`` words precede it ("The sky looks blue | because air...").
    Cutting only the first piece left the speech to run dry after a short one ("This."
    plays for half a second while the LLM still writes the next sentence: a second of silence
    inside the reply on a busy machine), so phrases go on until ``lead_words`` words have
    gone, by when the LLM is ahead of the speech; then the sentence tokenizer takes the rest.
    Pieces keep their spacing: joined, they are the text the LLM wrote (captions and
    transcripts).
    """

    MIN_CLAUSE_WORDS = 3
    LEAD_WORDS = 8
    FIRST_CLAUSE_WORDS = 1
    FIRST_JOIN_WORDS = 4
    JOIN_WORDS = frozenset(
        "and but or so because to of in at on for with from about than that which who when "
        "where while if as since until".split()
    )
    _END = re.compile(r"[.!?…]+[\"')\]]*(\s+)")
    _CLAUSE = re.compile(r"[,;:—–]+(\s+)")
    _WORD = re.compile(r"\s([A-Za-z]+)(?=\s)")

    def __init__(self, lead_words: int = LEAD_WORDS, *,
                 first_clause_words: int = FIRST_CLAUSE_WORDS,
                 first_join_words: int = FIRST_JOIN_WORDS) -> None:
        """``first_join_words`` 0: the first piece is never cut without a mark."""
        self.done = False
        self._lead = lead_words
        self._first_clause = max(1, first_clause_words)
        self._first_join = first_join_words
        self._words = 0
        self._buf = ""

    def push(self, text: str) -> tuple[list[str], str]:
        """Add text: (the phrases it completed, what goes to the sentence tokenizer)."""
        self._buf += text
        phrases: list[str] = []
        while not self.done:
            cut = self._cut()
            if cut is None:
                break
            phrase, self._buf = self._buf[:cut], self._buf[cut:]
            phrases.append(phrase)
            self._words += len(phrase.split())
            self.done = self._words >= self._lead
        rest = ""
        if self.done:
            rest, self._buf = self._buf, ""
        return phrases, rest

    def release(self) -> str:
        """The text ended (or was flushed) first: what is left goes the usual way."""
        self.done = True
        rest, self._buf = self._buf, ""
        return rest

    def _cut(self) -> int | None:
        first = self._words == 0
        for m in self._END.finditer(self._buf):
            if self._buf[: m.start()].strip():
                return m.end()
        min_words = self._first_clause if first else self.MIN_CLAUSE_WORDS
        for m in self._CLAUSE.finditer(self._buf):
            if len(self._buf[: m.start()].split()) >= min_words:
                return m.end()
        if first and self._first_join > 0:
            for m in self._WORD.finditer(self._buf):
                if (m.group(1).lower() in self.JOIN_WORDS
                        and len(self._buf[: m.start()].split()) >= self._first_join):
                    return m.start(1)  # the space stays with the first piece
        return None


class LocalTTS(tts.TTS):
    """Piper voice ``joe-us`` (en_US, medium), streamed per sentence, with phoneme timings."""

    def __init__(
        self,
        *,
        engine: PiperEngine,
        on_alignment: AlignmentCallback | None = None,
        sentence_tokenizer: tokenize.SentenceTokenizer | None = None,
        lead_words: int = 8,
        first_clause_words: int = LeadPhrases.FIRST_CLAUSE_WORDS,
        first_join_words: int = LeadPhrases.FIRST_JOIN_WORDS,
    ) -> None:
        """``lead_words``: the reply's first words go out phrase by phrase (``LeadPhrases``);
        1 cuts only the first phrase. ``first_*``: how early the first phrase is cut."""
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=engine.sample_rate,
            num_channels=1,
        )
        self._engine = engine
        self.on_alignment = on_alignment
        self._lead_words = max(1, lead_words)
        self._first_cut = {"first_clause_words": first_clause_words,
                           "first_join_words": first_join_words}
        self._tokenizer = sentence_tokenizer or tokenize.blingfire.SentenceTokenizer(
            retain_format=True
        )

    @property
    def model(self) -> str:
        return f"piper-{self._engine.voice_name}"

    @property
    def provider(self) -> str:
        return "local"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _PiperChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        return _PiperSynthesizeStream(tts=self, conn_options=conn_options)


class _PiperChunkedStream(tts.ChunkedStream):
    def __init__(self, *, tts: LocalTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._piper = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine = self._piper._engine
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=engine.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        words = SentenceWords(self.input_text, piece_ends(self.input_text))
        position = 0.0
        timeline = _Timeline()
        async for chunk in _piper_chunks(engine, self.input_text, PlaybackClock()):
            if not position:
                chunk = chunk.without_lead(engine.sample_rate)  # the sound starts at once
            position = timeline.at(position)
            _push_words(output_emitter, words, chunk, engine.sample_rate, position)
            _notify(self._piper.on_alignment, chunk, engine.sample_rate)
            output_emitter.push(chunk.pcm)
            position += chunk.num_samples / engine.sample_rate
        _push_rest(output_emitter, words, position)
        output_emitter.flush()


class _PiperSynthesizeStream(tts.SynthesizeStream):
    def __init__(self, *, tts: LocalTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._piper = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        engine = self._piper._engine
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=engine.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=utils.shortuuid())
        sentences = self._piper._tokenizer.stream()
        lead = LeadPhrases(self._piper._lead_words, **self._piper._first_cut)
        phrase_q: asyncio.Queue[str | None] = asyncio.Queue()  # None: the lead is over

        def take(phrases: list[str], rest: str) -> None:
            for phrase in phrases:
                phrase_q.put_nowait(phrase)
            if lead.done:
                phrase_q.put_nowait(None)
                if rest:
                    sentences.push_text(rest)

        def release_lead() -> None:
            if not lead.done:
                take([], lead.release())

        async def forward_input() -> None:
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    release_lead()
                    sentences.flush()
                elif not lead.done:
                    take(*lead.push(data))
                else:
                    sentences.push_text(data)
            release_lead()
            sentences.end_input()

        async def synthesize() -> None:
            position = 0.0  # seconds into the playback where the next chunk plays
            clock = PlaybackClock()
            timeline = _Timeline()

            async def speak(token: str) -> None:
                nonlocal position
                text = token.strip()
                if not text:
                    output_emitter.push_timed_transcript(TimedString(text=token, start_time=position))
                    return
                self._mark_started()
                lead = len(token) - len(token.lstrip())  # Piper is given the text stripped
                words = SentenceWords(token, [lead + end for end in piece_ends(text)])
                logger.debug("TTS piece queued", extra={"chars": len(text)})
                async for chunk in _piper_chunks(engine, text, clock):
                    if not position:
                        logger.debug("TTS first audio")  # a mark for latency traces
                        # the reply's first sound at once: the quiet before the sentence
                        # only delays it (the pauses between sentences stay)
                        chunk = chunk.without_lead(engine.sample_rate)
                    position = timeline.at(position)
                    _push_words(output_emitter, words, chunk, engine.sample_rate, position)
                    _notify(self._piper.on_alignment, chunk, engine.sample_rate)
                    output_emitter.push(chunk.pcm)
                    position += chunk.num_samples / engine.sample_rate
                _push_rest(output_emitter, words, position)
                output_emitter.flush()

            while (phrase := await phrase_q.get()) is not None:
                await speak(phrase)
            async for ev in sentences:
                await speak(ev.token)

        tasks = [
            asyncio.create_task(forward_input(), name="LocalTTS.forward_input"),
            asyncio.create_task(synthesize(), name="LocalTTS.synthesize"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await sentences.aclose()
            await utils.aio.cancel_and_wait(*tasks)


class EspeakTTS(tts.TTS):
    """espeak-ng: 22.05 kHz robotic voice, ~10 ms per sentence, no model weights."""

    def __init__(
        self,
        *,
        engine: EspeakEngine,
        voice: str = ESPEAK_DEFAULT_VOICE,
        words_per_minute: int = 165,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=engine.sample_rate,
            num_channels=1,
        )
        self._engine = engine
        self._voice = voice
        self._wpm = words_per_minute

    @property
    def model(self) -> str:
        return f"espeak-ng-{self._voice}"

    @property
    def provider(self) -> str:
        return "espeak"

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _EspeakChunkedStream(tts=self, input_text=text, conn_options=conn_options)


class _EspeakChunkedStream(tts.ChunkedStream):
    def __init__(self, *, tts: EspeakTTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._espeak = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        t = self._espeak
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=t._engine.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        pcm = await t._engine.executor.run(
            lambda: t._engine.synthesize_sync(
                self.input_text, voice=t._voice, words_per_minute=t._wpm
            )
        )
        output_emitter.push(pcm)
        output_emitter.flush()


@register("tts", "local", extra="local")
def create_local_tts(options: TTSSettings, ctx: ProviderContext) -> Any:
    """Piper; ``on_alignment`` can be set on the returned object by the local avatar."""
    voice = options.voice if options.provider == "local" else PIPER_VOICES[0]
    return LocalTTS(engine=get_piper(ctx, voice))


@register("tts", "espeak")
def create_espeak_tts(options: TTSSettings, ctx: ProviderContext) -> Any:
    """espeak-ng; the configured voice is used when it is an espeak voice name."""
    voice = options.voice if options.provider == "espeak" and options.voice else ""
    if not voice or voice in PIPER_VOICES:
        voice = ESPEAK_DEFAULT_VOICE
    return EspeakTTS(engine=get_espeak(ctx), voice=voice)
