"""The live agent's local model by thread count and weights, idle and beside busy loops.

    .venv/bin/python -m bench.llm_threads --threads 1,2 --busy 0,1,2 --rounds 8
    .venv/bin/python -m bench.llm_threads --threads 1 --weights q4_1,q4_0 --busy 0,1 --out llm-weights

A live worker's cores are rarely free while the agent writes its reply: the face renders,
the VAD and Whisper run, Piper voices the first phrase, other sessions do the same, and on
a shared machine other programs take their share. ``--busy N`` starts N processes that spin
on the CPU (as such a neighbour does) for that step. Each round asks every engine the same
question in turn (variants interleaved, so a change of the machine's load hits both alike)
and times the first token and the first 20 tokens of a streamed answer, with the persona
prefix cached as in a call. Writes ``bench/results/<--out>.{json,md}`` (llm-threads).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.catalog import LLM_MODELS
from config.session import DEFAULT_INSTRUCTIONS
from engines.llama import LlamaEngine, LlamaOptions, load_llama

RESULTS = Path(__file__).parent / "results"
QUESTIONS = (
    "What colour is the sky on a sunny day?",
    "Please tell me a long story about a lighthouse keeper and the sea.",
    "How do I boil an egg?",
    "Why is the sea salty?",
    "Can you recommend a good book for a long train ride?",
)
TOKENS = 20


def _spin() -> None:
    while True:
        pass


def _ask(engine: LlamaEngine, question: str) -> tuple[float, float]:
    """(first token, 20th token) in seconds from the request."""
    started = time.perf_counter()
    marks: list[float] = []

    def on_chunk(chunk: dict[str, Any]) -> bool:
        choices = chunk.get("choices") or [{}]
        if (choices[0].get("delta") or {}).get("content"):
            marks.append(time.perf_counter() - started)
        return len(marks) >= TOKENS

    engine.chat_stream_sync({
        "messages": [{"role": "system", "content": DEFAULT_INSTRUCTIONS},
                     {"role": "user", "content": question}],
        "max_tokens": TOKENS + 4, "temperature": 0.0, "cache_prompt": True,
    }, on_chunk)
    if not marks:
        raise RuntimeError("the model wrote nothing")
    return marks[0], marks[-1]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q * (len(s) - 1)))], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated thread counts; 1/2: one writes, two read the prompt")
    parser.add_argument("--busy", default="0,1,2", help="busy loops beside, per step")
    parser.add_argument("--rounds", type=int, default=8, help="questions per engine and step")
    parser.add_argument("--weights", default="q4_1", help="comma-separated: q4_1 (shipped), q4_0")
    parser.add_argument("--out", default="llm-threads", help="result file stem in bench/results")
    args = parser.parse_args()
    # "1/2": one thread writes, two evaluate the prompt
    variants = [(t, w) for t in args.threads.split(",") for w in args.weights.split(",")]
    busy_steps = [int(b) for b in args.busy.split(",")]
    model = next(iter(LLM_MODELS))
    def options(t: str, w: str) -> LlamaOptions:
        write, _, read = t.partition("/")
        return LlamaOptions(use=f"bench-{t}-{w}", threads=int(write),
                            batch_threads=int(read or write), weights=w)

    engines = {(t, w): load_llama(model, options(t, w)) for t, w in variants}
    for engine in engines.values():
        engine.warm_prefix(DEFAULT_INSTRUCTIONS)
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for busy in busy_steps:
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
        for p in spinners:
            p.start()
        try:
            times: dict[tuple[str, str], dict[str, list[float]]] = {
                v: {"first": [], "twenty": []} for v in variants}
            for r in range(args.rounds):
                for v, engine in engines.items():
                    first, twenty = _ask(engine, QUESTIONS[r % len(QUESTIONS)])
                    times[v]["first"].append(first)
                    times[v]["twenty"].append(twenty)
        finally:
            for p in spinners:
                p.terminate()
                p.join()
        for t, weights in variants:
            f, w = times[(t, weights)]["first"], times[(t, weights)]["twenty"]
            rows.append({"busy": busy, "threads": t, "weights": weights, "rounds": args.rounds,
                         "first_p50": _pct(f, 0.5), "first_max": round(max(f), 3),
                         "twenty_p50": _pct(w, 0.5), "twenty_max": round(max(w), 3)})
    command = (".venv/bin/python -m bench.llm_threads "
               f"--threads {args.threads} --busy {args.busy} --rounds {args.rounds}"
               + (f" --weights {args.weights}" if args.weights != "q4_1" else "")
               + (f" --out {args.out}" if args.out != "llm-threads" else ""))
    meta = {"command": command, "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_before": [round(x, 2) for x in load_before], "model": model}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "# The live agent's local model by thread count and weights, idle and beside busy loops",
        "",
        f"Command: `{command}` ({meta['at']}). Machine: {meta['machine']}; load average "
        f"before {meta['load_before']}. Model {model}, persona prefix cached, greedy decoding.",
        "Variants interleaved question by question; the busy loops spin on the CPU for "
        "the whole step. Weights: q4_1 as shipped, q4_0 made from it (engines.requant).",
        "",
        "| busy loops | threads | weights | first token p50 / max (s) | 20 tokens p50 / max (s) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(f"| {row['busy']} | {row['threads']} | {row['weights']} | {row['first_p50']} / "
                     f"{row['first_max']} | {row['twenty_p50']} / {row['twenty_max']} |")
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
