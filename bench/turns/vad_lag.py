"""How late the local STT hears that the caller went quiet, rule by rule, on the corpus.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.vad_lag

The speculative transcript starts after ``STT__SPECULATE_AFTER`` (0.05 s) of quiet by the
STT's Silero VAD; the three rules below wait 0.1 s (the default until 2026-12-03), so they
compare with the figures measured before. Per rule: from the utterance's true end of speech (its energy) to the moment
the rule has counted that much quiet (p50, p95, on complete utterances), and how often it
counted that much inside speech before the true end (each such speculation is a Whisper
decode thrown away). Rules: the VAD's own count (``raw_accumulated_silence``, which LiveKit's
Silero stream reports before it scores the window it sends it with), that count with the
window counted (``live.providers.local_stt.quiet_after``), and that with a window under 0.5
counted as quiet while speaking (instead of under 0.35). ``--quiet 0.05,0.075`` adds the
live rule at shorter waits than 0.1 s (what ``STT__SPECULATE_AFTER`` would trade: an earlier
speculation against more of them inside speech); ``--frames 20,50`` adds those waits as the
room hears them, where a window is scored only once the frame of the caller's audio holding
its end is complete (``STT__FRAME_MS``; the rows without it count from the window's end).
Writes ``bench/results/turns-vad-lag.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.turns.corpus import RATE, build, load_manifest, read_wav

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.vad_lag"
QUIET_S = 0.1


async def _events(vad: object, audio: np.ndarray) -> list[tuple[float, float, bool, float, float]]:
    from livekit import rtc
    from livekit.agents import vad as lk_vad

    stream = vad.stream()  # type: ignore[attr-defined]
    pcm = np.clip(audio * 32768, -32768, 32767).astype(np.int16)
    hop = RATE // 50
    for i in range(0, len(pcm) - hop + 1, hop):
        stream.push_frame(rtc.AudioFrame(pcm[i : i + hop].tobytes(), RATE, 1, hop))
    stream.end_input()
    out = []
    async for ev in stream:
        if ev.type == lk_vad.VADEventType.INFERENCE_DONE:
            window = sum(f.duration for f in ev.frames)
            out.append((ev.samples_index / RATE, ev.probability, ev.speaking,
                        ev.raw_accumulated_silence, window))
    await stream.aclose()
    return out


def _fired(events: list[tuple[float, float, bool, float, float]], rule: str,
           wait: float = QUIET_S) -> list[float]:
    from live.providers.local.turn_models import VAD_ACTIVATION, VAD_DEACTIVATION

    times, quiet = [], 0.0
    for t, p, speaking, raw, window in events:
        if rule == "the VAD's own count":
            quiet = raw
        else:
            below = VAD_DEACTIVATION if rule.endswith("counted") else float(rule.split()[-1])
            voiced = p >= VAD_ACTIVATION or (speaking and p > below)
            quiet = 0.0 if voiced else (raw if rule.endswith("counted") else quiet) + window
        if speaking and quiet >= wait - 1e-9:
            times.append(t)
    return times


async def run(waits: list[float], frames: list[int]) -> dict:
    from livekit.plugins import silero

    from live.providers.local.turn_models import STT_MIN_SILENCE, VAD_ACTIVATION, VAD_DEACTIVATION

    vad = silero.VAD.load(min_silence_duration=STT_MIN_SILENCE, activation_threshold=VAD_ACTIVATION,
                          deactivation_threshold=VAD_DEACTIVATION)
    truth = {r["id"]: r for r in json.loads((Path("var/corpus/turns") / "index.json").read_text())}
    rendered = build()
    items = [i for i in load_manifest() if i.kind == "complete"]
    # row name -> (rule, quiet it waits for, the room frame it is heard in: s, 0 for none)
    plan = {r: (r, QUIET_S, 0.0) for r in ("the VAD's own count", "this window counted",
                                          "quiet below 0.5")}
    plan |= {f"this window counted, {w} s": ("this window counted", w, 0.0)
             for w in waits if abs(w - QUIET_S) > 1e-9}
    plan |= {f"this window counted, {w} s, {ms} ms frames": ("this window counted", w, ms / 1000)
             for w in waits for ms in frames}
    rules = list(plan)
    lag: dict[str, dict[str, list[float]]] = {r: {} for r in rules}
    inside: dict[str, int] = dict.fromkeys(rules, 0)
    for it in items:
        events = await _events(vad, read_wav(Path(rendered[it.id].path))[0])
        start, end = truth[it.id]["speech_start"], truth[it.id]["speech_end"]
        for rule in rules:
            name, wait, frame = plan[rule]
            fired = _fired(events, name, wait)
            # a window is scored only once the room's frame holding its end is in (runs of
            # quiet inside speech are told apart on the windows' own times below)
            heard = [math.ceil(t / frame - 1e-9) * frame for t in fired] if frame else fired
            after = [h for t, h in zip(fired, heard, strict=True) if t >= end]
            last = -1.0
            for t in (t for t in fired if start < t < end):
                inside[rule] += t - last > 0.05  # a new run of quiet, a new speculation
                last = t
            if after:
                lag[rule].setdefault(it.group, []).append(after[0] - end)
    return {"rules": rules, "lag": lag, "inside": inside, "n": len(items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", default="", help="extra waits for the live rule, e.g. 0.05,0.075")
    parser.add_argument("--frames", default="",
                        help="room input frame lengths (ms) for the --quiet waits, e.g. 20,50")
    args = parser.parse_args()
    waits = [float(w) for w in args.quiet.split(",") if w.strip()]
    frames = [int(f) for f in args.frames.split(",") if f.strip()]
    command = COMMAND + (f" --quiet {args.quiet}" if waits else "")
    command += f" --frames {args.frames}" if frames else ""
    res = asyncio.run(run(waits, frames))
    def q(v: list[float], p: float) -> float:
        return round(float(np.percentile(v, p)), 3)
    lines = ["# When the local STT hears the caller go quiet (bench.turns.vad_lag)", "",
             f"Command: `{command}` ({datetime.now(UTC).isoformat(timespec='seconds')}). Machine: "
             f"{platform.machine()}, {os.cpu_count()} cores. {res['n']} complete utterances of the "
             f"turn-taking corpus; seconds from the true end of speech until {QUIET_S} s of quiet "
             "(or the wait in the rule's name) is counted (when the speculative transcript "
             "starts).", "",
             "| Rule | p50 | p95 | synthetic p50 | natural p50 | human p50 | counted inside speech |",
             "|---|---|---|---|---|---|---|"]
    for rule in res["rules"]:
        every = [x for v in res["lag"][rule].values() for x in v]
        groups = [q(res["lag"][rule][g], 50) if res["lag"][rule].get(g) else "-"
                  for g in ("synthetic", "natural", "human")]
        lines.append(f"| {rule} | {q(every, 50)} | {q(every, 95)} | " + " | ".join(map(str, groups))
                     + f" | {res['inside'][rule]} |")
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "turns-vad-lag.json").write_text(json.dumps(res, indent=1) + "\n")
    (RESULTS / "turns-vad-lag.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
