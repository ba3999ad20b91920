"""Text to speech: Piper with phoneme alignments and its vocoder streamed within a sentence."""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.espeak import ESPEAK_LOCK
from engines.executors import CPU_THREADS, DeadlineExecutor
from engines.model_paths import piper_voice_paths
from engines.store import ModelStore
from engines.threads import named_threads

logger = logging.getLogger(__name__)


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

    def without_lead(self, sample_rate: int) -> SpeechChunk:
        """The chunk without the quiet Piper puts before a sentence's first sound.

        Every sentence opens with its start marker ``^``: 35 to 90 ms of near silence. Before
        the sentences that follow, it is the pause between them; before a reply's first,
        it only makes the caller wait. The quiet is cut up to ``LEAD_KEEP_SECONDS`` before
        the first sample louder than ``LEAD_QUIET``, never past the marker, and the marker's
        sample count shrinks with it, so word and mouth timings stay on the sound.
        """
        if not self.phonemes or self.phonemes[0][0] != "^":
            return self
        pcm = np.frombuffer(self.pcm, np.int16)
        loud = np.flatnonzero(np.abs(pcm[: self.phonemes[0][1]].astype(np.int32)) > LEAD_QUIET)
        sound = int(loud[0]) if loud.size else self.phonemes[0][1]
        cut = min(self.phonemes[0][1], max(0, sound - int(LEAD_KEEP_SECONDS * sample_rate)))
        if cut <= 0 or cut >= self.num_samples:
            return self
        marker = (("^", self.phonemes[0][1] - cut),)
        return SpeechChunk(
            pcm[cut:].tobytes(),
            self.num_samples - cut,
            marker + self.phonemes[1:],
            self.span_samples - cut if self.span_samples > 0 else self.span_samples,
        )


# ``SpeechChunk.without_lead``: quieter than this (int16, about -40 dBFS) is silence, and this
# much of it stays before the first sound, so a soft onset is not clipped.
LEAD_QUIET = 330
LEAD_KEEP_SECONDS = 0.01


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
    return [piece for piece, _ in split_long_text_at(text, max_chars)]


def piece_ends(text: str, max_chars: int = 100) -> list[int]:
    """Where in ``text`` each piece ``split_long_text`` makes of it ends: Piper speaks each
    piece as sentences of its own, so word timings must break there as at a full stop."""
    return [end for _, end in split_long_text_at(text, max_chars)]


def split_long_text_at(text: str, max_chars: int = 100) -> list[tuple[str, int]]:
    """``split_long_text``'s pieces, each with the offset in ``text`` where it ends."""
    if len(text) <= max_chars:
        return [(text, len(text))]
    pieces: list[tuple[str, int]] = []
    pos = 0
    for brk in [*_CLAUSE_BREAK.finditer(text), None]:
        end = len(text) if brk is None else brk.start()
        clause = text[pos:end]
        if pieces and len(pieces[-1][0]) + 1 + len(clause) <= max_chars:
            pieces[-1] = (f"{pieces[-1][0]} {clause}", end)
        else:
            pieces.append((clause, end))
        if brk is not None:
            pos = brk.end()
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
        # no busy-waiting between ops: the LLM writes the rest of the reply on the same cores
        # while the first phrase is voiced (as LiveKit's Silero session does)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")

        def session(path: Path) -> Any:
            with named_threads(f"piper-{voice}"):  # onnxruntime's pool threads
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


def get_piper(store: ModelStore, voice: str, *, stream_vocoder: bool = True) -> PiperEngine:
    """The voice, once per process; ``stream_vocoder=False``: whole-sentence Piper (a caller's
    or a benchmark's reference voice), a second engine beside the live one."""
    key = f"local.tts.piper.{voice}" + ("" if stream_vocoder else ".whole")
    return store.cached(
        key, lambda: PiperEngine(voice, store.settings.var_dir, stream_vocoder=stream_vocoder)
    )
