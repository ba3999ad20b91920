"""A fresh process's first Whisper decode, with and without the prewarm's warm-up.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_warm            # about a minute

Each sample is a new process (as a LiveKit job process is) that loads Whisper tiny.en,
warms it the way the prewarm does (``WhisperEngine.warm_sync``) or not, then decodes six of
the corpus's complete utterances on the live window; the utterances are rotated so each
comes first once. Writes ``bench/results/whisper-warm.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
UTTERANCES = 6


def child(rotation: int, warm: bool) -> dict[str, Any]:
    import numpy as np

    from bench.turns.corpus import build, load_manifest, read_wav
    from config.settings import load_settings
    from engines.store import process_models
    from engines.whisper import get_whisper

    settings = load_settings(_env_file=None)
    window = settings.stt.window_seconds
    engine = get_whisper(process_models(settings), "tiny.en")
    rendered = build()
    items = [i for i in load_manifest() if i.kind == "complete"][:UTTERANCES]
    audio = []
    for it in items:
        pcm, _ = read_wav(Path(rendered[it.id].path))
        audio.append(np.asarray(pcm[: int(rendered[it.id].speech_end * 16000)], dtype=np.float32))
    audio = audio[rotation:] + audio[:rotation]
    warm_s = None
    if warm:
        t = time.perf_counter()
        engine.warm_sync(window)
        warm_s = round(time.perf_counter() - t, 3)
    decodes = []
    for a in audio:
        t = time.perf_counter()
        engine.transcribe_sync(a, "en", window)
        decodes.append(round(time.perf_counter() - t, 3))
    return {"rotation": rotation, "warm": warm, "warm_s": warm_s, "decodes": decodes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("ROTATION", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(int(args.child[0]), args.child[1] == "warm")))
        return
    load = os.getloadavg()
    runs = []
    for rotation in range(UTTERANCES):
        for mode in ("cold", "warm") if rotation % 2 == 0 else ("warm", "cold"):
            out = subprocess.run([sys.executable, "-m", "bench.turns.stt_warm", "--child",
                                  str(rotation), mode], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(runs[-1], flush=True)

    def med(xs: list[float]) -> float:
        return round(statistics.median(xs), 3)

    rows = []
    for warm in (False, True):
        rs = [r for r in runs if r["warm"] == warm]
        rows.append({
            "warm": warm, "processes": len(rs),
            "first_p50": med([r["decodes"][0] for r in rs]),
            "first_max": max(r["decodes"][0] for r in rs),
            "later_p50": med([d for r in rs for d in r["decodes"][1:]]),
            "warm_up_p50": med([r["warm_s"] for r in rs]) if warm else None,
        })
    out = {"command": "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_warm",
           "when": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average_before": [round(x, 2) for x in load], "rows": rows, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "whisper-warm.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# Whisper's first decode in a fresh process (bench.turns.stt_warm)", "",
        f"Command: `{out['command']}` ({out['when']}). Machine: {out['machine']}, load average "
        f"before {tuple(out['load_average_before'])}. Each row: {UTTERANCES} new processes, each "
        f"decoding {UTTERANCES} complete utterances of the corpus on the live window, rotated so "
        "each utterance comes first once; warm and cold processes alternate.", "",
        "| prewarm | processes | first decode p50 (s) | first decode max (s) | later decodes p50 (s) | warm-up p50 (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {'warm-up decode' if r['warm'] else 'none (before)'} | {r['processes']} | "
                     f"{r['first_p50']} | {r['first_max']} | {r['later_p50']} | "
                     f"{r['warm_up_p50'] if r['warm_up_p50'] is not None else ''} |")
    (RESULTS / "whisper-warm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
