"""The turn-taking corpus: speech the project did not make with its own voice.

Voices come from engines and recordings other than the agent's Piper voice:

- *synthetic-sounding*: espeak-ng formant voices (accents and variants), Festival's diphone
  voice ``kal``;
- *natural-sounding*: Flite's data-driven voices (``slt``, ``rms``, ``awb``), Festival's HTS
  voice ``cmu_us_slt_arctic_hts``, and real human recordings: the spoken channel names that
  Debian's ``alsa-utils`` ships (``/usr/share/sounds/alsa``, GPL-2+). No PyPI package was found
  that ships recorded English speech under a licence that allows this use (``pytest-audioeval``
  ships synthesised samples; Whisper's and faster-whisper's sample recordings are not in their
  packages).

Conditions vary per utterance: clean, room noise (15 to 25 dB SNR), a little echo (100 ms,
-12 dB), faster or slower speech, higher or lower pitch. Hesitations are rendered as one
sentence with a comma at the pause point (so the first part keeps its continuing intonation),
then that pause is stretched to 300 to 900 ms. A quarter of the items (by a hash of the id) are
held out: thresholds are tuned on ``dev`` only and ``holdout`` is reported apart.

    .venv/bin/python -m bench.turns.corpus            # renders var/corpus/turns/*.wav

The manifest (``bench/turns/manifest.json``) is committed; the audio is rendered at bench time
(about a minute) because every engine is a Debian package (``scripts/setup.sh --bench``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
import wave
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bench.turns.texts import (
    BACKCHANNEL,
    COMPLETE,
    FINAL_COMPLETE,
    FINAL_HESITATION,
    HESITATION,
    INTERRUPTION,
)

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "manifest.json"
OUT = Path("var/corpus/turns")
RATE = 16000
LEAD_S = 0.6  # quiet before the caller speaks
TRAIL_S = 3.5  # quiet after: longer than any end-of-turn rule needs
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")

Kind = Literal["complete", "hesitation", "backchannel", "interruption"]
Group = Literal["synthetic", "natural", "human"]


@dataclass(frozen=True)
class Voice:
    id: str
    engine: Literal["espeak", "flite", "festival", "recording"]
    name: str
    group: Group


VOICES: list[Voice] = [
    Voice("espeak-us", "espeak", "en-us", "synthetic"),
    Voice("espeak-gb-m3", "espeak", "en-gb+m3", "synthetic"),
    Voice("espeak-scotland", "espeak", "en-gb-scotland", "synthetic"),
    Voice("espeak-caribbean-f2", "espeak", "en-029+f2", "synthetic"),
    Voice("espeak-us-f4", "espeak", "en-us+f4", "synthetic"),
    Voice("espeak-rp-klatt", "espeak", "en-gb-x-rp+klatt2", "synthetic"),
    Voice("festival-kal", "festival", "(voice_kal_diphone)", "synthetic"),
    Voice("flite-slt", "flite", "slt", "natural"),
    Voice("flite-rms", "flite", "rms", "natural"),
    Voice("flite-awb", "flite", "awb", "natural"),
    Voice("festival-slt-hts", "festival", "(voice_cmu_us_slt_arctic_hts)", "natural"),
]
RECORDING = Voice("alsa-human", "recording", "alsa", "human")
CONDITIONS = ["clean", "noise", "echo", "fast", "slow", "high", "low", "noise+echo"]
ALSA_TEXTS = {
    "Front_Center": "Front center.",
    "Front_Left": "Front left.",
    "Front_Right": "Front right.",
    "Rear_Center": "Rear center.",
    "Rear_Left": "Rear left.",
    "Rear_Right": "Rear right.",
    "Side_Left": "Side left.",
    "Side_Right": "Side right.",
}


@dataclass
class Item:
    id: str
    kind: Kind
    text: str  # what is said; "|" marks a hesitation pause
    voice: str
    group: Group
    condition: str
    pause_ms: int = 0  # hesitations: the pause inside the turn
    split: Literal["dev", "holdout", "final"] = "dev"


@dataclass
class Rendered:
    """Where speech is in the rendered file (seconds from its start)."""

    id: str
    path: str
    speech_start: float
    speech_end: float
    pause_start: float | None = None
    pause_end: float | None = None


def _split(item_id: str) -> Literal["dev", "holdout"]:
    return "holdout" if int(hashlib.sha256(item_id.encode()).hexdigest(), 16) % 4 == 0 else "dev"


def plan() -> list[Item]:
    """Every utterance, with voice and condition assigned deterministically."""
    items: list[Item] = []
    synth = VOICES
    k = 0
    for i, text in enumerate(COMPLETE):
        for r in range(3):  # three renditions of each text, in three different voices
            voice = synth[(i * 3 + r) % len(synth)]
            cond = CONDITIONS[(i + r * 3) % len(CONDITIONS)]
            items.append(Item(f"c{i:02d}-{r}", "complete", text, voice.id, voice.group, cond))
            k += 1
    for stem, text in ALSA_TEXTS.items():
        items.append(Item(f"h-{stem.lower()}", "complete", text, RECORDING.id, "human", "clean"))
    for i, text in enumerate(HESITATION):
        voice = synth[(i * 5 + 2) % len(synth)]
        cond = CONDITIONS[(i * 3) % len(CONDITIONS)]
        pause = 300 + (i * 211) % 601  # spread over 300..900 ms
        items.append(Item(f"p{i:02d}", "hesitation", text, voice.id, voice.group, cond, pause))
    for i, text in enumerate(BACKCHANNEL):
        for r in range(2):
            voice = synth[(i * 2 + r * 5) % len(synth)]
            items.append(Item(f"b{i}-{r}", "backchannel", text, voice.id, voice.group, "clean"))
    for i, text in enumerate(INTERRUPTION):
        for r in range(4):
            voice = synth[(i * 4 + r * 3) % len(synth)]
            items.append(Item(f"i{i}-{r}", "interruption", text, voice.id, voice.group, "clean"))
    for it in items:
        it.split = _split(it.id)
    # the final check: written after the default was chosen, run once at the end
    for i, text in enumerate(FINAL_COMPLETE):
        voice = synth[(i * 7 + 1) % len(synth)]
        cond = CONDITIONS[(i * 5 + 1) % len(CONDITIONS)]
        items.append(Item(f"fc{i:02d}", "complete", text, voice.id, voice.group, cond, split="final"))
    for i, text in enumerate(FINAL_HESITATION):
        voice = synth[(i * 3 + 4) % len(synth)]
        cond = CONDITIONS[(i * 7 + 2) % len(CONDITIONS)]
        pause = 300 + (i * 157) % 601
        items.append(Item(f"fh{i:02d}", "hesitation", text, voice.id, voice.group, cond, pause, "final"))
    return items


def write_manifest(items: list[Item]) -> None:
    MANIFEST.write_text(json.dumps([asdict(i) for i in items], indent=1) + "\n")


def load_manifest() -> list[Item]:
    return [Item(**d) for d in json.loads(MANIFEST.read_text())]


# ------------------------------------------------------------------------------ rendering


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        rate, ch = w.getframerate(), w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32)
    if ch > 1:
        pcm = pcm.reshape(-1, ch).mean(axis=1)
    return pcm / 32768.0, rate


def write_wav(path: Path, audio: np.ndarray, rate: int = RATE) -> None:
    pcm = np.clip(audio * 32768.0, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _synth(voice: Voice, text: str, out: Path) -> None:
    if voice.engine == "espeak":
        cmd = ["espeak-ng", "-v", voice.name, "-w", str(out), text]
        subprocess.run(cmd, check=True, capture_output=True)
    elif voice.engine == "flite":
        subprocess.run(["flite", "-voice", voice.name, "-t", text, "-o", str(out)], check=True,
                       capture_output=True)
    elif voice.engine == "festival":
        subprocess.run(["text2wave", "-eval", voice.name, "-o", str(out)], input=text.encode(),
                       check=True, capture_output=True)
    else:
        raise ValueError(f"{voice.id}: not a synthesiser")


_SOX_EFFECTS = {
    "clean": [],
    "noise": [],
    "echo": ["echo", "0.8", "0.9", "100", "0.25"],
    "noise+echo": ["echo", "0.8", "0.9", "100", "0.25"],
    "fast": ["tempo", "-s", "1.2"],
    "slow": ["tempo", "-s", "0.85"],
    "high": ["pitch", "250"],
    "low": ["pitch", "-250"],
}


def _to_16k(src: Path, dst: Path, condition: str) -> None:
    cmd = ["sox", str(src), "-r", str(RATE), "-c", "1", "-b", "16", str(dst), *_SOX_EFFECTS[condition]]
    subprocess.run(cmd, check=True, capture_output=True)


def _frames_rms(audio: np.ndarray, hop: int = RATE // 100) -> np.ndarray:
    n = len(audio) // hop
    return np.sqrt(np.mean(audio[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """First and last sample of speech: 10 ms frames within 35 dB of the loudest."""
    rms = _frames_rms(audio)
    loud = np.nonzero(rms > rms.max() * 10 ** (-35 / 20))[0]
    hop = RATE // 100
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def gaps(audio: np.ndarray, min_ms: int = 40) -> list[tuple[int, int]]:
    """Quiet stretches inside speech (sample ranges), quieter than 30 dB below the peak."""
    rms = _frames_rms(audio)
    quiet = rms < rms.max() * 10 ** (-30 / 20)
    hop = RATE // 100
    out, start = [], None
    for i, q in enumerate(quiet):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if (i - start) * 10 >= min_ms:
                out.append((start * hop, i * hop))
            start = None
    return out


def _render_speech(voice: Voice, text: str, condition: str, tmp: Path) -> np.ndarray:
    raw, wav = tmp / "raw.wav", tmp / "16k.wav"
    _synth(voice, text, raw)
    _to_16k(raw, wav, condition)
    audio, _ = read_wav(wav)
    a, b = speech_bounds(audio)
    return audio[a:b]


def _hesitation(voice: Voice, item: Item, tmp: Path) -> tuple[np.ndarray, int, int]:
    """Speech with the pause at "|" stretched to item.pause_ms; returns audio, pause bounds."""
    first, second = (p.strip() for p in item.text.split("|"))
    joined = f"{first.rstrip(',')}, {second}"
    speech = _render_speech(voice, joined, item.condition, tmp)
    expected = len(first) / len(joined) * len(speech)
    near = [g for g in gaps(speech) if abs((g[0] + g[1]) / 2 - expected) < 0.25 * len(speech)]
    pause = int(item.pause_ms / 1000 * RATE)
    if near:
        g0, g1 = min(near, key=lambda g: abs((g[0] + g[1]) / 2 - expected))
        head, tail = speech[:g0], speech[g1:]
    else:  # the engine did not pause at the comma: say the parts apart
        head = _render_speech(voice, f"{first.rstrip(',')},", item.condition, tmp)
        tail = _render_speech(voice, second, item.condition, tmp)
    audio = np.concatenate([head, np.zeros(pause, np.float32), tail])
    return audio, len(head), len(head) + pause


def _room_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Brownish noise: a room's hum and air, not white hiss."""
    white = rng.standard_normal(n).astype(np.float32)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(801) / 801, mode="same")  # remove drift
    return (brown / (np.std(brown) + 1e-9)).astype(np.float32)


def render(item: Item, out_dir: Path = OUT) -> Rendered:
    voice = RECORDING if item.voice == RECORDING.id else next(v for v in VOICES if v.id == item.voice)
    rng = np.random.default_rng(int(hashlib.sha256(item.id.encode()).hexdigest()[:8], 16))
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        pause: tuple[int, int] | None = None
        if voice.engine == "recording":
            stem = next(s for s, txt in ALSA_TEXTS.items() if f"h-{s.lower()}" == item.id)
            _to_16k(ALSA_SOUNDS / f"{stem}.wav", tmp / "16k.wav", item.condition)
            audio, _ = read_wav(tmp / "16k.wav")
            a, b = speech_bounds(audio)
            speech = audio[a:b]
        elif item.kind == "hesitation":
            speech, p0, p1 = _hesitation(voice, item, tmp)
            pause = (p0, p1)
        else:
            speech = _render_speech(voice, item.text, item.condition, tmp)
    speech = speech / (np.abs(speech).max() + 1e-9) * 0.5  # about -6 dBFS peak
    lead, trail = int(LEAD_S * RATE), int(TRAIL_S * RATE)
    audio = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    # a microphone is never digitally silent: clean items get a faint room tone (55 dB under
    # the speech), "noise" items a loud one (15 to 25 dB SNR)
    snr_db = rng.uniform(15, 25) if "noise" in item.condition else 55.0
    level = np.sqrt(np.mean(speech**2)) * 10 ** (-snr_db / 20)
    audio = audio + _room_noise(len(audio), rng) * level
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{item.id}.wav"
    write_wav(path, audio)
    return Rendered(
        id=item.id,
        path=str(path),
        speech_start=LEAD_S,
        speech_end=round(LEAD_S + len(speech) / RATE, 3),
        pause_start=round(LEAD_S + pause[0] / RATE, 3) if pause else None,
        pause_end=round(LEAD_S + pause[1] / RATE, 3) if pause else None,
    )


def missing_tools() -> list[str]:
    need = ["espeak-ng", "flite", "text2wave", "sox"]
    out = [t for t in need if shutil.which(t) is None]
    if not ALSA_SOUNDS.is_dir():
        out.append("alsa-utils sounds")
    return out


def build(out_dir: Path = OUT, *, force: bool = False) -> dict[str, Rendered]:
    """Render every manifest item (cached by id); returns where speech is in each file."""
    missing = missing_tools()
    if missing:
        raise SystemExit(
            f"corpus: missing {', '.join(missing)}: run `scripts/setup.sh --bench` "
            "(apt: espeak-ng flite festival festvox-us-slt-hts festvox-kallpc16k sox alsa-utils)"
        )
    index = out_dir / "index.json"
    done: dict[str, Rendered] = {}
    if index.exists() and not force:
        done = {r["id"]: Rendered(**r) for r in json.loads(index.read_text())}
    items = load_manifest()
    for item in items:
        if item.id not in done or not Path(done[item.id].path).exists():
            done[item.id] = render(item, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps([asdict(done[i.id]) for i in items], indent=1))
    return {i.id: done[i.id] for i in items}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", action="store_true", help="rewrite the committed manifest from texts.py")
    ap.add_argument("--force", action="store_true", help="render again even if cached")
    args = ap.parse_args()
    if args.plan:
        write_manifest(plan())
    rendered = build(force=args.force)
    items = load_manifest()
    by_kind: dict[str, int] = {}
    for it in items:
        by_kind[it.kind] = by_kind.get(it.kind, 0) + 1
    voices = sorted({it.voice for it in items})
    print(f"{len(rendered)} utterances in {OUT}: {by_kind}; {len(voices)} voices")


if __name__ == "__main__":
    main()
