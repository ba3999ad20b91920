"""Quiet callers with and without LiveKit's input gain control, on the turn-taking corpus.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.gain_control

LiveKit's room input runs WebRTC's automatic gain control on every caller frame unless
``AudioInputOptions.auto_gain_control`` is off (``STT__GAIN_CONTROL=false`` here). It costs
the session's event loop on every frame; this measures what it buys. Each complete utterance
of the corpus (dev and held-out alike, every third) is scaled to a speech level, put after 3 s
of faint noise (the gain control adapts during a call), taken to 48 kHz and handed over in
50 ms frames as the room does, with and without the gain control, then back to 16 kHz. Per
level and arm: the share of the utterance's 32 ms windows Silero scores as speech (the
session's VAD), utterances it scores mostly as silence, and Whisper tiny.en's word error
rate on the 10 s window the live STT uses. Writes ``bench/results/gain-control.{json,md}``;
the CPU side is measured in the room by ``bench.load`` (see that file).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.turns.corpus import OUT, build, load_manifest, read_wav, speech_bounds
from bench.wer import wer

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.gain_control"
LEVELS_DBFS = (-26, -40, -50)  # a usual headset; a quiet caller; a caller far from the mic
FRAME = 2400  # 50 ms at 48 kHz: room_io's default input frame


def _up3(x: np.ndarray) -> np.ndarray:
    return np.interp(np.arange(len(x) * 3) / 3.0, np.arange(len(x)), x).astype(np.float32)


def _down3(x: np.ndarray) -> np.ndarray:
    n = len(x) // 3 * 3
    return x[:n].reshape(-1, 3).mean(axis=1).astype(np.float32)


def _through_room(x16: np.ndarray, gain_control: bool) -> np.ndarray:
    """16 kHz float -> 48 kHz int16 frames (gain-controlled or not) -> 16 kHz float."""
    from livekit import rtc

    pcm = np.clip(_up3(x16) * 32768, -32768, 32767).astype(np.int16)
    apm = rtc.AudioProcessingModule(auto_gain_control=True) if gain_control else None
    out = []
    for i in range(0, len(pcm) - FRAME + 1, FRAME):
        frame = rtc.AudioFrame(pcm[i:i + FRAME].tobytes(), 48000, 1, FRAME)
        if apm is not None:
            apm.process_stream(frame)
        out.append(np.frombuffer(frame.data, np.int16))
    return _down3(np.concatenate(out).astype(np.float32) / 32768)


def _speech_share(session: object, x: np.ndarray, a: int, b: int) -> float:
    from livekit.plugins.silero.onnx_model import OnnxModel

    from live.providers.local.turn_models import VAD_ACTIVATION

    model = OnnxModel(onnx_session=session, sample_rate=16000)  # type: ignore[arg-type]
    w = model.window_size_samples
    probs = np.array([model(x[i:i + w]) for i in range(0, len(x) - w + 1, w)])
    inside = probs[a // w: b // w]
    return float(np.mean(inside > VAD_ACTIVATION)) if inside.size else 0.0


def main() -> None:
    from livekit.plugins.silero.onnx_model import new_inference_session

    from config.settings import load_settings
    from engines.store import ModelStore
    from engines.whisper import DEFAULT_WINDOW_SECONDS, get_whisper

    build()
    items = [i for i in load_manifest() if i.kind == "complete"][::3]
    whisper = get_whisper(ModelStore(load_settings(_env_file=None)), "tiny.en")
    session = new_inference_session(True)
    rng = np.random.default_rng(0)
    lead = 1e-4 * rng.standard_normal(16000 * 3).astype(np.float32)
    rows: list[dict[str, Any]] = []
    for level in LEVELS_DBFS:
        for item in items:
            x, rate = read_wav(OUT / f"{item.id}.wav")
            assert rate == 16000, rate
            a, b = speech_bounds(x)
            rms = float(np.sqrt(np.mean(x[a:b] ** 2))) + 1e-9
            y = np.concatenate([lead, x * (10 ** (level / 20) / rms)])
            a, b = a + lead.size, b + lead.size
            for on in (False, True):
                z = _through_room(y, on)
                text = whisper.transcribe_sync(z[max(0, a - 4800): b + 8000], "en",
                                               window_seconds=DEFAULT_WINDOW_SECONDS).text
                rows.append({"id": item.id, "group": item.group, "split": item.split,
                             "level_dbfs": level, "gain_control": on,
                             "speech_share": round(_speech_share(session, z, a, b), 3),
                             "wer": round(wer(item.text.replace("|", " "), text), 3), "heard": text})
        print(f"{level} dBFS done", flush=True)

    lines = [
        "# Quiet callers with and without LiveKit's input gain control",
        "",
        f"Command: `{COMMAND}` ({datetime.now(UTC).isoformat(timespec='seconds')}). "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores. {len(items)} complete utterances "
        "of the turn-taking corpus (every third, dev and held out), each scaled to a speech level "
        "after 3 s of faint noise, through 48 kHz 50 ms frames with and without WebRTC's gain "
        "control (as LiveKit's room input), Silero on the result (the share of the utterance's "
        "windows it scores as speech; utterances it scores under half speech), Whisper tiny.en "
        "on the live STT's 10 s window.",
        "",
        "| speech level | gain control | Silero speech windows | utterances under half | Whisper WER |",
        "|---|---|---|---|---|",
    ]
    summary: list[dict[str, Any]] = []
    for level in LEVELS_DBFS:
        for on in (False, True):
            sel = [r for r in rows if r["level_dbfs"] == level and r["gain_control"] is on]
            share = statistics.mean(r["speech_share"] for r in sel)
            under = sum(r["speech_share"] < 0.5 for r in sel)
            err = statistics.mean(r["wer"] for r in sel)
            summary.append({"level_dbfs": level, "gain_control": on, "speech_share": share,
                            "under_half": under, "wer": err, "n": len(sel)})
            lines.append(f"| {level} dBFS | {'on' if on else 'off'} | {100 * share:.0f}% | "
                         f"{under} of {len(sel)} | {100 * err:.1f}% |")
    groups = sorted({r["group"] for r in rows})
    lines += ["", "Whisper WER per voice group (utterances):", "",
              "| speech level | gain control | " + " | ".join(groups) + " |",
              "|---|---|" + "---|" * len(groups)]
    for level in LEVELS_DBFS:
        for on in (False, True):
            cells = []
            for g in groups:
                errs: list[float] = [r["wer"] for r in rows if r["level_dbfs"] == level
                                     and r["gain_control"] is on and r["group"] == g]
                cells.append(f"{100 * statistics.mean(errs):.1f}% ({len(errs)})")
            lines.append(f"| {level} dBFS | {'on' if on else 'off'} | " + " | ".join(cells) + " |")
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gain-control.json").write_text(json.dumps(
        {"command": COMMAND, "summary": summary, "rows": rows}, indent=1) + "\n")
    (RESULTS / "gain-control.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
