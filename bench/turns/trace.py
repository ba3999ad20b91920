"""Where a turn's time goes: the caller's end of speech against the live worker's own log.

Run a ``bench.turns.call`` with the worker at debug level, then trace its result file:

    scripts/netns-run .venv/bin/python -m bench.turns.call --phases turns --per-voice 2 \\
        --env LOGGING__LEVEL=DEBUG --label trace
    .venv/bin/python -m bench.turns.trace bench/results/turns-call-trace.json

Per turn, seconds after the caller stopped speaking: the speculative transcript (LiveKit's
preflight, which starts the reply) queued and its decode begun (later when Whisper was still
busy with an interim), the final transcript, the end of the turn (LiveKit
commits it), the first reply audio leaving the avatar, and the reply heard at the caller.
Caller and worker share the machine's clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

MARKS = {  # worker log message -> column
    "speculative transcription started": "spec_in",
    "speculative transcript ready": "spec_out",
    "caller speech ended (VAD)": "vad_end",
    "received user preflight transcript": "preflight",
    "reply LLM started": "llm",
    "reply LLM first text": "llm_first",
    "TTS piece queued": "tts_in",
    "TTS first audio": "tts_out",
    "local transcript": "final",
    "user turn committed": "committed",
    "using preemptive generation": "used",
    "reply audio to the face": "to_face",
    "reply audio playing": "playing",
}
# faster-whisper's own line as a decode begins (after any decode ahead of it on the model's
# thread): "whisper_in" is the first after the speculation started
DECODE_PREFIX = "Processing segment at"
COLUMNS = ["spec_in", "whisper_in", "spec_out", "vad_end", "preflight", "llm", "llm_first", "tts_in", "tts_out", "final", "committed", "used", "to_face", "playing", "heard"]


def _records(log: Path) -> list[tuple[float, dict[str, Any]]]:
    """The worker log's JSON records that carry a timestamp, in time order."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "timestamp" in rec:
            out.append((datetime.fromisoformat(rec["timestamp"]).timestamp(), rec))
    return sorted(out, key=lambda e: e[0])


def _events(records: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, str]]:
    out = []
    for t, rec in records:
        message = str(rec.get("message", ""))
        mark = "decode" if message.startswith(DECODE_PREFIX) else MARKS.get(message)
        if mark:
            out.append((t, mark))
    return out


def _turns(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The result's answered turns, in the order they were spoken."""
    rows = [r for r in result["turns"] if r.get("spoke_end_unix") and r.get("heard_s") is not None]
    return sorted(rows, key=lambda r: r["spoke_end_unix"])


GAP_COLUMNS = ["dropouts", "dropout_s", "caption_end_s", "frames", "starved_s", "late_s"]


def gaps(result: dict[str, Any], log: Path) -> list[dict[str, Any]]:
    """Per turn: the dropouts the caller heard in the reply, where its last caption came
    against its last sound, and the worker's account of the dropouts: sound that had not come (``starved_s``: the voice or the LLM behind it) against
    sound the face or the event loop was late with (``late_s``)."""
    played = [(t, rec) for t, rec in _records(log) if rec.get("message") == "reply played"]
    rows = _turns(result)
    out = []
    for i, r in enumerate(rows):
        t0 = r["spoke_end_unix"] + r["heard_s"]
        t1 = rows[i + 1]["spoke_end_unix"] if i + 1 < len(rows) else float("inf")
        mark = next((rec for t, rec in played if t0 <= t < t1), None)
        out.append({"id": r["id"], "voice": r["voice"], "dropouts": r.get("dropouts"),
                    "dropout_s": r.get("dropout_s"), "caption_end_s": r.get("caption_end_s"),
                    **({k: mark.get(k) for k in GAP_COLUMNS[3:]}
                       if mark else {})})
    return out


def trace(result: dict[str, Any], log: Path) -> list[dict[str, Any]]:
    events = _events(_records(log))
    rows = _turns(result)
    out = []
    for r in rows:
        t0 = r["spoke_end_unix"]
        t1 = t0 + r["heard_s"] + 0.5
        row: dict[str, Any] = {"id": r["id"], "voice": r["voice"], "heard": r["heard_s"]}
        for t, mark in events:
            if t0 - 0.5 <= t <= t1 and mark not in row:
                row[mark] = round(t - t0, 3)
        if "spec_in" in row:
            after = [t - t0 for t, mark in events if mark == "decode" and t - t0 >= row["spec_in"]]
            if after and after[0] <= t1 - t0:
                row["whisper_in"] = round(after[0], 3)
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("result", type=Path, help="a bench.turns.call result (.json)")
    ap.add_argument("--log", type=Path, help="the worker log (default: the one the result names)")
    args = ap.parse_args()
    result = json.loads(args.result.read_text())
    log = args.log or Path(result["worker_log"])
    rows = trace(result, log)
    print("| turn | voice | " + " | ".join(COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for r in rows:
        print(f"| {r['id']} | {r['voice']} | " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |")
    meds = []
    for c in COLUMNS:
        vals = [r[c] for r in rows if isinstance(r.get(c), float)]
        meds.append(str(round(statistics.median(vals), 3)) if vals else "")
    print("| **median** | | " + " | ".join(meds) + " |")
    print("\nGaps inside the replies: heard at the caller, and their causes in the worker\n")
    grows = gaps(result, log)
    print("| turn | voice | " + " | ".join(GAP_COLUMNS) + " |")
    print("|---|---|" + "---|" * len(GAP_COLUMNS))
    for r in grows:
        print(f"| {r['id']} | {r['voice']} | " + " | ".join(str(r.get(c, "")) for c in GAP_COLUMNS) + " |")
    def total(c: str) -> str:
        vals = [r[c] for r in grows if isinstance(r.get(c), (int, float))]
        if c == "caption_end_s":  # a lag, not an amount: its median
            return f"median {round(statistics.median(vals), 3)}" if vals else ""
        return str(round(sum(vals), 3))

    print("| **total** | | " + " | ".join(total(c) for c in GAP_COLUMNS) + " |")


if __name__ == "__main__":
    main()
