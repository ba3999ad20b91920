"""Whisper's encoder window fitted to the utterance, against the fixed 10 s window.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_window

Whisper pads every clip to its window and the encoder pays for the padding: a 2 s turn on the
10 s window spends most of its encoder time on silence. A window fitted to the utterance (its
length plus ``WINDOW_MARGIN_SECONDS``, rounded up to whole seconds, at least a floor) costs
less, but the decoder was trained on 30 s and may fail to stop on a short one; such results are
caught and decoded again on the full 30 s window, which costs far more than the window saved.

Per candidate floor, on every utterance of the turn-taking corpus spoken whole (the VAD's
first speech to its last, as the live STT hands it over): time per transcript (the variants
alternate per utterance, so each sees the same machine load), full-window retries and the word
error rate, per split and per voice group. Chosen on ``dev``: the lowest mean time (retries
included) among the variants whose word error rate is at most a point above the fixed
window's; ``holdout`` and ``final`` are reported apart. Writes
``bench/results/turns-stt-window.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.turns.corpus import RATE, build, load_manifest, read_wav
from bench.wer import edit_counts
from engines.whisper import WINDOW_MARGIN_SECONDS

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_window"
FLOORS = (3.0, 6.0, 8.0)  # fitted window floors; 10.0 is today's fixed window
FIXED = 10.0


def fitted_window(duration: float, floor: float, cap: float) -> float:
    """The utterance's length plus the margin in whole seconds, at least ``floor``, at most
    ``cap``."""
    return min(cap, max(floor, float(math.ceil(duration + WINDOW_MARGIN_SECONDS))))


def _q(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)), 3) if v else None


def run(model: str, limit: int | None) -> dict:
    from config.settings import load_settings
    from engines.store import process_models
    from engines.whisper import get_whisper

    rendered = build()
    items = [i for i in load_manifest() if i.kind in ("complete", "hesitation")]
    if limit:
        items = items[:limit]
    engine = get_whisper(process_models(load_settings()), model)
    variants = [f"fit >= {f:g} s" for f in FLOORS] + [f"fixed {FIXED:g} s"]
    rows: list[dict] = []
    engine.transcribe_sync(np.zeros(RATE, np.float32), "en", FIXED)  # warm-up
    for n, it in enumerate(items):
        r = rendered[it.id]
        audio, _ = read_wav(Path(r.path))
        clip = audio[int(max(0.0, r.speech_start - 0.1) * RATE): int((r.speech_end + 0.2) * RATE)]
        dur = clip.size / RATE
        order = variants[n % len(variants):] + variants[: n % len(variants)]
        for v in order:
            window = FIXED if v.startswith("fixed") else fitted_window(dur, float(v.split()[2]), FIXED)
            before = engine.full_window_retries
            t0 = time.perf_counter()
            text = engine.transcribe_sync(clip, "en", window).text
            took = time.perf_counter() - t0
            edits, words = edit_counts(it.text.replace("|", " "), text)
            rows.append({"id": it.id, "variant": v, "split": it.split, "group": it.group,
                         "voice": it.voice, "seconds": round(dur, 2), "window": window,
                         "took": round(took, 4), "retry": engine.full_window_retries > before,
                         "edits": edits, "words": words, "text": text})
        if (n + 1) % 20 == 0:
            print(f"{n + 1}/{len(items)}", flush=True)
    return {"variants": variants, "rows": rows}


def summarize(rows: list[dict]) -> dict:
    took = [r["took"] for r in rows]
    words = sum(r["words"] for r in rows)
    return {"n": len(rows), "p50": _q(took, 50), "p95": _q(took, 95),
            "mean": round(float(np.mean(took)), 4) if took else None,
            "retries": sum(r["retry"] for r in rows),
            "wer": round(sum(r["edits"] for r in rows) / max(1, words), 4)}


def render(meta: dict) -> str:
    lines = [
        "# Whisper's encoder window fitted to the utterance (bench.turns.stt_window)", "",
        f"Command: `{meta['command']}` ({meta['date']}). Machine: {meta['machine']}, load average "
        f"{meta['load_average']}. Model: Whisper {meta['model']}; utterances: the corpus's complete "
        "and hesitation turns, each spoken whole (the live STT cuts hesitations at the pause; "
        "whole turns are the longer case). Times are per transcript, retries included.", "",
        f"Chosen on dev: **{meta['chosen']}** (the lowest mean time, full-window retries included, "
        "with a word error rate at most a point above the fixed window's).", "",
        "| Variant | split | transcripts | p50 s | p95 s | mean s | full-window retries | WER |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in meta["variants"]:
        for split in ("dev", "holdout", "final", "all"):
            s = meta["summary"][v][split]
            if not s["n"]:
                continue
            mark = "**" if v == meta["chosen"] and split == "all" else ""
            lines.append(f"| {mark}{v}{mark} | {split} | {s['n']} | {s['p50']} | {s['p95']} | "
                         f"{s['mean']} | {s['retries']} | {s['wer']:.1%} |")
    lines += ["", "Per voice group (all splits):", "",
              "| Variant | group | p50 s | p95 s | retries | WER |", "|---|---|---|---|---|---|"]
    for v in meta["variants"]:
        for g, s in meta["summary"][v]["groups"].items():
            lines.append(f"| {v} | {g} | {s['p50']} | {s['p95']} | {s['retries']} | {s['wer']:.1%} |")
    lines += ["", "Side by side, per utterance: the chosen variant's time over the fixed window's "
              f"(median ratio {meta['ratio_p50']}, p95 {meta['ratio_p95']}).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny.en", choices=("tiny.en", "base"))
    ap.add_argument("--limit", type=int, default=None, help="only the first N utterances (a quick look)")
    args = ap.parse_args()
    res = run(args.model, args.limit)
    rows = res["rows"]
    summary: dict[str, dict] = {}
    for v in res["variants"]:
        mine = [r for r in rows if r["variant"] == v]
        summary[v] = {s: summarize([r for r in mine if r["split"] == s]) for s in ("dev", "holdout", "final")}
        summary[v]["all"] = summarize(mine)
        summary[v]["groups"] = {g: summarize([r for r in mine if r["group"] == g])
                                for g in sorted({r["group"] for r in mine})}
    dev = {v: summary[v]["dev"] for v in res["variants"]}
    # the cheapest on average (retries included) that hears as well as the fixed window
    fixed_wer = dev[f"fixed {FIXED:g} s"]["wer"]
    chosen = min((v for v in res["variants"] if dev[v]["wer"] <= fixed_wer + 0.01),
                 key=lambda v: (dev[v]["mean"], dev[v]["p95"]))
    fixed = {r["id"]: r["took"] for r in rows if r["variant"] == f"fixed {FIXED:g} s"}
    ratios = [r["took"] / fixed[r["id"]] for r in rows if r["variant"] == chosen and fixed.get(r["id"])]
    meta = {"command": COMMAND + ("" if args.model == "tiny.en" else f" --model {args.model}")
            + (f" --limit {args.limit}" if args.limit else ""),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average": [round(x, 2) for x in os.getloadavg()], "model": args.model,
            "variants": res["variants"], "chosen": chosen, "summary": summary,
            "ratio_p50": _q(ratios, 50), "ratio_p95": _q(ratios, 95), "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    stem = "turns-stt-window" + ("" if args.model == "tiny.en" else f"-{args.model}")
    if args.limit:
        stem += "-quick"
    (RESULTS / f"{stem}.json").write_text(json.dumps(meta, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(render(meta))
    print(render(meta))


if __name__ == "__main__":
    main()
