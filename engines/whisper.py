"""Speech to text: faster-whisper on a short encoder window, with checks on each result."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from config.catalog import WHISPER_MODELS
from engines import EngineError
from engines.executors import SerialExecutor
from engines.model_paths import whisper_base_path, whisper_tiny_path
from engines.store import ModelStore
from engines.threads import named_threads

logger = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16000
# Whisper's decoder steps are too small to split across threads: on a 2-core machine one
# thread decodes ~1.6x faster than two (thread hand-offs dominate) and the encoder loses less
# than that (measured side by side: 190-220 ms vs 230-340 ms for a 3 s utterance, 10 s window).
WHISPER_THREADS = 1


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
    # False: a short-window decode that looked wrong, returned as is (``full_retry=False``)
    trusted: bool = True
    doubt: str | None = None  # why it looked wrong (``short_window_doubt``)


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
# Doubts the full window answers better. Not "unlikely" (a segment's mean log-probability under
# -1): that is hard audio, not a short window's failure; through Opus, on the turn-taking
# corpus, the full window left those guesses as wrong as it found them (94% against 88% WER,
# 7 better, 5 worse, 0.67 s a retry: ``bench/results/turns-stt-doubt.md``), and the retry put
# the speculative transcript about a second after the caller stopped instead of half that.
RETRIED_DOUBTS = frozenset({"empty", "token cap", "compressible", "word rate", "repeats"})


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


def short_window_doubt(
    text: str, segments: list[tuple[int, float, float]], duration: float, cap: int | None
) -> str | None:
    """Why a short-window decode cannot be kept (``None``: it can), for the full-window retry.

    ``segments`` are (tokens, compression ratio, mean log-probability). The VAD heard speech,
    so an empty text is a miss too. Rejected: the token cap reached (no end of text), a
    compressible or unlikely segment (Whisper's own fallback rules), more words than anyone
    says in that time, a phrase said twice in a row (the usual decoder loop).
    """
    if not text:
        return "empty"
    if cap is not None and sum(n for n, _, _ in segments) >= cap - 1:
        return "token cap"
    if any(ratio > 2.4 for _, ratio, _ in segments):
        return "compressible"
    if len(text.split()) > 3 + MAX_WORDS_PER_SECOND * duration:
        return "word rate"
    if repeats_itself(text):
        return "repeats"
    # last: the decoder's own failures above are named first, whatever its confidence
    return "unlikely" if any(logprob < -1.0 for _, _, logprob in segments) else None


class WhisperEngine:
    """faster-whisper (CTranslate2 int8, one thread) behind one worker thread."""

    def __init__(self, model: str, path: Path) -> None:
        self.model_name = model
        self.english_only = model.endswith(".en")
        with named_threads(f"whisper-{model}"):  # CTranslate2's own threads
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
    def model(self) -> Any:
        """The faster-whisper model, for uses off the live path that decode with options of
        their own (``avatar call`` hearing the agent); never while a session uses the engine."""
        return self._model

    @property
    def encoded_frames(self) -> int:
        """Mel frames the encoder saw last (3000 = Whisper's full 30 s window)."""
        return int(self._model.encoded_frames)

    def transcribe_sync(
        self, audio: np.ndarray, language: str | None, window_seconds: float = FULL_WINDOW_SECONDS,
        full_retry: bool = True, retried: frozenset[str] = RETRIED_DOUBTS,
    ) -> Transcript:
        """16 kHz mono float32 in, one final transcript out (greedy: cheapest on 2 cores).

        ``full_retry=False``: a short-window result that looks wrong comes back marked
        ``trusted=False`` instead of being decoded again on the full window (about a second
        on two busy cores), for a caller that only needs to know whether to wait for words.
        Otherwise only the doubts in ``retried`` are decoded again; by default an unlikely
        guess is Whisper's best at either window and comes back trusted, its ``doubt`` named.
        """
        duration = audio.size / WHISPER_SAMPLE_RATE
        if duration + WINDOW_MARGIN_SECONDS <= window_seconds < FULL_WINDOW_SECONDS:
            cap = int(10 + MAX_TOKENS_PER_SECOND * duration)
            short, doubt = self._decode(audio, language, window_seconds, cap)
            if doubt is None:
                return short
            if not full_retry:
                return replace(short, trusted=False, doubt=doubt)
            if doubt not in retried:
                return replace(short, doubt=doubt)
            self.full_window_retries += 1
            logger.debug(
                "short-window transcript rejected; decoding on the full window",
                extra={"audio_seconds": round(duration, 2), "doubt": doubt,
                       "lk.pii.text": short.text},
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
    ) -> tuple[Transcript, str | None]:
        """One greedy decode on a window; also says why the result looks wrong, if it does."""
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
            return transcript, None
        stats = [(len(s.tokens), s.compression_ratio, s.avg_logprob) for s in raw]
        return transcript, short_window_doubt(
            text, stats, audio.size / WHISPER_SAMPLE_RATE, cap
        )

    def warm_sync(self, window_seconds: float = DEFAULT_WINDOW_SECONDS) -> Transcript:
        """One short-window decode of a second of faint noise, before any caller's.

        A fresh process's first decode took 0.19 to 0.21 s where the next took 0.11 to 0.14 s
        (CTranslate2's first run), and in a job process that first decode is the caller's
        first question: through the room, each process's first speculative transcript took
        0.36 s against 0.24 s for the later ones. After this (about 0.18 s, in the prewarm)
        the first decode costs what the later ones do (bench/results/whisper-warm.md)."""
        noise = np.random.default_rng(0).standard_normal(WHISPER_SAMPLE_RATE) * 0.01
        return self.transcribe_sync(noise.astype(np.float32), "en" if self.english_only else None,
                                    window_seconds, full_retry=False)

    async def transcribe(
        self, audio: np.ndarray, language: str | None, window_seconds: float = FULL_WINDOW_SECONDS,
        full_retry: bool = True, retried: frozenset[str] = RETRIED_DOUBTS,
    ) -> Transcript:
        self.busy += 1
        try:
            return await self.executor.run(
                self.transcribe_sync, audio, language, window_seconds, full_retry, retried
            )
        finally:
            self.busy -= 1


def load_whisper(model: str, var_dir: Path) -> WhisperEngine:
    if model == "tiny.en":
        path = whisper_tiny_path()
    elif model == "base":
        path = whisper_base_path(var_dir)
    else:
        raise EngineError(
            f"unknown local STT model {model!r}; choose one of: {', '.join(WHISPER_MODELS)}"
        )
    return WhisperEngine(model, path)


def get_whisper(store: ModelStore, model: str) -> WhisperEngine:
    return store.cached(f"local.stt.{model}", lambda: load_whisper(model, store.settings.var_dir))
