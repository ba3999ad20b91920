"""Whisper tiny.en against base on the corpus, side by side: time per utterance (same process,
alternating, so both see the same machine load).

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_cost

Writes ``bench/results/turns-stt-cost.json``; the word error rates are in turns-endpoint.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.turns.corpus import RATE, build, load_manifest, read_wav
from bench.turns.features import Models

RESULTS = Path(__file__).resolve().parents[1] / "results"


def main(limit: int = 40) -> None:
    rendered = build()
    items = [i for i in load_manifest() if i.kind == "complete"][::3][:limit]
    models = Models()
    times: dict[str, list[float]] = {"tiny.en": [], "base": []}
    ratios: list[float] = []
    for it in items:
        r = rendered[it.id]
        audio, _ = read_wav(Path(r.path))
        clip = audio[int((r.speech_start - 0.1) * RATE) : int((r.speech_end + 0.2) * RATE)]
        pair = {}
        for model in ("tiny.en", "base"):
            t0 = time.perf_counter()
            models.transcribe(clip, model)
            pair[model] = time.perf_counter() - t0
            times[model].append(pair[model])
        ratios.append(pair["base"] / pair["tiny.en"])
    out = {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.stt_cost",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "utterances": len(items),
        "median_s": {m: round(float(np.median(v)), 3) for m, v in times.items()},
        "p95_s": {m: round(float(np.percentile(v, 95)), 3) for m, v in times.items()},
        "base_over_tiny_median_ratio": round(float(np.median(ratios)), 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "turns-stt-cost.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
