"""What every end-of-turn candidate sees at each pause of each corpus utterance, computed once.

Silero VAD (LiveKit's plugin, as the session runs it, but with a 0.2 s silence rule) cuts each
utterance into speech segments; every gap is a *pause* where a turn could end. At each pause,
0.2 s into the silence (when LiveKit asks a streaming turn detector for a prediction), we keep:

- ``smart``: Smart Turn v3's P(complete) on the last 8 s of audio;
- ``mini``: LiveKit's ``v1-mini`` P(complete) on the last 1.2 s (the native model in
  ``livekit-local-inference``);
- ``text``: Whisper tiny.en's transcript of the turn so far (the local STT's speculative final);
- ``lm``: SmolLM2's P(end) on that transcript (``live.providers.turn_lm``).

Whole utterances are also transcribed with tiny.en and base (short window) for the word error
rate. Results are cached in ``var/corpus/turns/features.json``.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.turns.corpus import OUT, RATE, Rendered, build, load_manifest, read_wav

CACHE = OUT / "features.json"
PREDICT_AFTER = 0.2  # s of silence before the detector is asked (LiveKit's MIN_SILENCE_DURATION_MS)
VAD_MIN_SILENCE = 0.2


@dataclass
class Pause:
    onset: float  # VAD end of speech (s in the file)
    length: float  # until the VAD's next start of speech; inf after the last segment
    smart: float = 0.0
    mini: float = 0.0
    text: str = ""
    text_ms: float = 0.0  # Whisper time for the speculative transcript
    lm: float = -1.0  # SmolLM2's P(end) on ``text``; -1 until scored
    conf: float = -1.0  # Whisper's confidence in ``text`` (exp mean log-prob); -1 until decoded


@dataclass
class Features:
    id: str
    segments: list[tuple[float, float]]
    pauses: list[Pause] = field(default_factory=list)
    wer_text: dict[str, str] = field(default_factory=dict)  # model -> whole-utterance transcript


async def vad_segments(audio: np.ndarray, vad: Any) -> list[tuple[float, float]]:
    from livekit import rtc
    from livekit.agents import vad as lk_vad

    stream = vad.stream()
    pcm = np.clip(audio * 32768, -32768, 32767).astype(np.int16)
    hop = RATE // 50
    for i in range(0, len(pcm) - hop + 1, hop):
        stream.push_frame(rtc.AudioFrame(pcm[i : i + hop].tobytes(), RATE, 1, hop))
    stream.end_input()
    segs: list[tuple[float, float]] = []
    start: float | None = None
    async for ev in stream:
        t = ev.samples_index / RATE
        if ev.type == lk_vad.VADEventType.START_OF_SPEECH:
            start = t - ev.speech_duration
        elif ev.type == lk_vad.VADEventType.END_OF_SPEECH and start is not None:
            segs.append((round(start, 3), round(t - ev.silence_duration, 3)))
            start = None
    if start is not None:
        segs.append((round(start, 3), round(len(pcm) / RATE, 3)))
    await stream.aclose()
    return segs


class Models:
    def __init__(self) -> None:
        from livekit.local_inference import EOT
        from livekit.plugins import silero

        from config.settings import load_settings
        from engines.store import process_models
        from engines.whisper import get_whisper
        from live.providers.smart_turn import SmartTurnModel

        self.vad = silero.VAD.load(min_silence_duration=VAD_MIN_SILENCE)
        self.smart = SmartTurnModel()
        self.eot = EOT()
        ctx = process_models(load_settings())
        self.whisper = {m: get_whisper(ctx, m) for m in ("tiny.en", "base")}

    def mini(self, audio: np.ndarray) -> float:
        n = int(1.2 * RATE)
        pcm = np.clip(audio[-n:] * 32768, -32768, 32767).astype(np.int16)
        return float(self.eot.predict(pcm))

    def transcribe(self, audio: np.ndarray, model: str = "tiny.en") -> str:
        return self.decode(audio, model)[0]

    def decode(self, audio: np.ndarray, model: str = "tiny.en") -> tuple[str, float]:
        """The transcript and Whisper's confidence in it, as the live STT's final has them."""
        from engines.whisper import DEFAULT_WINDOW_SECONDS

        r = self.whisper[model].transcribe_sync(audio, "en", DEFAULT_WINDOW_SECONDS)
        return r.text.strip(), round(r.confidence, 3)


async def features_for(r: Rendered, models: Models) -> Features:
    audio, _ = read_wav(Path(r.path))
    segs = await vad_segments(audio, models.vad)
    f = Features(id=r.id, segments=segs)
    if not segs:
        return f
    turn_start = max(0, int((segs[0][0] - 0.1) * RATE))
    for k, (_, end) in enumerate(segs):
        length = segs[k + 1][0] - end if k + 1 < len(segs) else float("inf")
        upto = int((end + PREDICT_AFTER) * RATE)
        head = audio[:upto]
        t0 = time.perf_counter()
        text, conf = models.decode(audio[turn_start:upto])
        p = Pause(
            onset=end,
            length=round(length, 3),
            smart=round(models.smart.predict(head), 4),
            mini=round(models.mini(head), 4),
            text=text,
            text_ms=round((time.perf_counter() - t0) * 1000, 1),
            conf=conf,
        )
        f.pauses.append(p)
    whole = audio[turn_start : int((segs[-1][1] + 0.3) * RATE)]
    f.wer_text = {m: models.transcribe(whole, m) for m in ("tiny.en", "base")}
    return f


def _load_cache() -> dict[str, Features]:
    if not CACHE.exists():
        return {}
    out = {}
    for d in json.loads(CACHE.read_text()):
        d["pauses"] = [Pause(**{**p, "length": float(p["length"])}) for p in d["pauses"]]
        d["segments"] = [tuple(s) for s in d["segments"]]
        out[d["id"]] = Features(**d)
    return out


def compute(*, force: bool = False) -> dict[str, Features]:
    rendered = build()
    cache = {} if force else _load_cache()
    todo = [r for i, r in rendered.items() if i not in cache]
    if todo:
        models = Models()
        for n, r in enumerate(todo, 1):
            cache[r.id] = asyncio.run(features_for(r, models))
            if n % 20 == 0:
                print(f"features: {n}/{len(todo)}", flush=True)
        CACHE.write_text(json.dumps([asdict(cache[i]) for i in rendered if i in cache]))
    if _decode_conf(rendered, cache) | _score_lm([cache[i] for i in rendered if i in cache]):
        CACHE.write_text(json.dumps([asdict(cache[i]) for i in rendered if i in cache]))
    return {i: cache[i] for i in rendered}


def _decode_conf(rendered: dict[str, Rendered], cache: dict[str, Features]) -> bool:
    """Add Whisper's confidence to cached pauses decoded before it was kept (the same decode)."""
    todo = [f for i, f in cache.items() if i in rendered and any(p.conf < 0 for p in f.pauses)]
    if not todo:
        return False
    models = Models()
    for f in todo:
        audio, _ = read_wav(Path(rendered[f.id].path))
        turn_start = max(0, int((f.segments[0][0] - 0.1) * RATE))
        for (_, end), p in zip(f.segments, f.pauses, strict=True):
            text, p.conf = models.decode(audio[turn_start:int((end + PREDICT_AFTER) * RATE)])
            if text != p.text:  # a decode is deterministic: a different text is a different corpus
                raise RuntimeError(f"{f.id}: the cached transcript {p.text!r} is now {text!r}; "
                                   "delete the features cache and run again")
    return True


def _score_lm(feats: list[Features]) -> bool:
    """Score the transcripts the cache has no language-model score for yet."""
    todo = [p for f in feats for p in f.pauses if p.lm < 0]
    if not todo:
        return False
    from config.settings import load_settings
    from engines.llama import load_llama, turn_options
    from live.providers.turn_lm import score_sync

    engine = load_llama("smollm2-135m", turn_options(load_settings().llm.weights))
    for p in todo:
        p.lm = round(score_sync(engine, p.text), 4)
    return True


if __name__ == "__main__":
    feats = compute()
    items = {i.id: i for i in load_manifest()}
    print(f"{len(feats)} utterances, {sum(len(f.pauses) for f in feats.values())} pauses")
    for i in list(feats)[:3]:
        print(items[i].text, asdict(feats[i]))
