"""The end-of-turn scorer on each of SmolLM2's weights: same verdicts, and how fast.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.scorer_weights

Every pause of the turn-taking corpus (its transcript so far, from ``bench.turns.features``)
is scored by ``live.providers.turn_lm.score_sync`` on an engine per weights, alternating per
pause so both see the same machine load. Reports the time per score and, at each threshold
the endpoint benchmark tries, the pauses whose verdict (wait the min or the max delay) differs
from the shipped Q4_1's. Writes ``bench/results/turns-scorer-weights.{json,md}``.

    .venv/bin/python -m bench.turns.scorer_weights --memory q4_1

loads the agent's engine (``LLM__WEIGHTS``) and a scorer on the given weights in this process
and prints its memory: on one file the two engines share its pages, which RSS counts twice
and the proportional set size (PSS) once.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "results"
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.scorer_weights"
WEIGHTS = ("q4_1", "q8_0", "q4_0")
THRESHOLDS = (0.003, 0.01, 0.03, 0.1)


def memory(weights: str) -> str:
    from config.settings import load_settings
    from engines.llama import agent_options, load_llama, turn_options
    from live.providers.turn_lm import score_sync

    settings = load_settings()
    agent = load_llama("smollm2-135m", agent_options(settings))
    scorer = load_llama("smollm2-135m", turn_options(weights))
    score_sync(scorer, "Hello there")
    agent.read_ahead_sync([{"role": "user", "content": "Hello there"}])
    fields: dict[str, int] = {}
    for path in ("/proc/self/status", "/proc/self/smaps_rollup"):
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssFile", "Pss", "Pss_File"):
                fields[key] = int(value.split()[0]) // 1024
    return (f"agent on {settings.llm.weights}, scorer on {weights}: RSS {fields['VmRSS']} MiB "
            f"(file {fields['RssFile']}), PSS {fields['Pss']} MiB (file {fields['Pss_File']})")


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memory", choices=WEIGHTS, help="print the memory of the agent's engine "
                    "and a scorer on these weights, and nothing else")
    args = ap.parse_args()
    if args.memory:
        print(memory(args.memory))
        return
    from bench.turns.features import compute
    from engines.llama import load_llama, turn_options
    from live.providers.turn_lm import score_sync

    pauses = [p for f in compute().values() for p in f.pauses]
    engines = {w: load_llama("smollm2-135m", turn_options(w)) for w in WEIGHTS}
    for engine in engines.values():
        score_sync(engine, "Hello there")  # pages the weights in
    scores: dict[str, list[float]] = {w: [] for w in WEIGHTS}
    took: dict[str, list[float]] = {w: [] for w in WEIGHTS}
    for i, p in enumerate(pauses):
        for w in WEIGHTS[i % len(WEIGHTS):] + WEIGHTS[: i % len(WEIGHTS)]:
            t0 = time.perf_counter()
            scores[w].append(score_sync(engines[w], p.text))
            took[w].append(time.perf_counter() - t0)
    rows: list[dict[str, Any]] = []
    for w in WEIGHTS:
        differ = {str(th): [pauses[k].text for k in range(len(pauses))
                            if (scores[w][k] >= th) != (scores["q4_1"][k] >= th)]
                  for th in THRESHOLDS}
        rows.append({"weights": w, "p50_s": round(float(np.percentile(took[w], 50)), 4),
                     "p95_s": round(float(np.percentile(took[w], 95)), 4),
                     "mean_s": round(float(np.mean(took[w])), 4), "differ": differ})
    meta = {"command": COMMAND, "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average": [round(x, 2) for x in os.getloadavg()], "pauses": len(pauses),
            "rows": rows}
    lines = ["# The end-of-turn scorer on each weights (bench.turns.scorer_weights)", "",
             f"Command: `{COMMAND}` ({meta['date']}). Machine: {meta['machine']}, load average "
             f"{meta['load_average']}. {len(pauses)} pauses of the turn-taking corpus, each scored "
             "on every weights in turn (one thread, as in the worker).", "",
             "| Weights | p50 s | p95 s | mean s | " + " | ".join(
                 f"verdicts unlike Q4_1's at {th}" for th in THRESHOLDS) + " |",
             "|---|---|---|---|" + "---|" * len(THRESHOLDS)]
    for r in rows:
        lines.append(f"| {r['weights']} | {r['p50_s']} | {r['p95_s']} | {r['mean_s']} | "
                     + " | ".join(str(len(r["differ"][str(th)])) for th in THRESHOLDS) + " |")
    lines.append("")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "turns-scorer-weights.json").write_text(json.dumps(meta, indent=1) + "\n")
    (RESULTS / "turns-scorer-weights.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
