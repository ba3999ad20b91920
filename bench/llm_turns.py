"""The local LLM over a conversation: prompt tokens evaluated and first token, turn by turn,
this checkout against an earlier commit, interleaved.

    .venv/bin/python -m bench.llm_turns --against b02e315 --rounds 2
    .venv/bin/python -m bench.llm_turns --long --against 2a8561a --rounds 1

``--long``: a long call instead, every question of the eval twice over (88 turns), so the
prompt outgrows the slot's context and drops its oldest turns; its results go to
``bench/results/llm-turns-long.{json,md}``.

llama.cpp reuses the longest prompt prefix it has already evaluated, so a later turn costs
what its prompt adds to the one before. Each round runs the same conversation (every fourth
question of ``bench/evals/persona.yaml``, with its persona: verbatim answers and generated
ones mixed) through ``LocalLLM`` at
temperature 0 on one thread, once with this checkout's code and once with the other commit's
(a git worktree, in a subprocess each, alternating so both meet the same machine load);
between turns it lets the model read ahead as the live worker does once a reply is stored
(``LocalLLM.read_ahead``, where the code has it) and waits 2 s, as the reply is spoken and the
next question asked. Writes
``bench/results/llm-turns.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# bench/evals/persona.yaml, written for the persona eval before this bench: every fourth
# question (names, role, facts, small talk, refusals), in its own persona's words
EVAL = ROOT / "bench" / "evals" / "persona.yaml"
SPOKEN_S = 2.0


async def conversation(long: bool = False) -> list[dict[str, Any]]:
    """One conversation with the code importable here; a row per generated later turn."""
    from dataclasses import replace

    import yaml
    from livekit.agents.llm import ChatContext

    from config.catalog import LLM_MODELS
    from config.settings import load_settings
    from engines.llama import agent_options, load_llama
    from live.providers.local_llm import LocalLLM

    # the live agent's options as each commit ships them, on one slot and one thread
    options = replace(agent_options(load_settings(_env_file=None)), parallel=1, threads=1)
    llm = LocalLLM(engine=load_llama(LLM_MODELS[0], options), temperature=0.0)
    data = yaml.safe_load(EVAL.read_text())
    every = [q["q"] for q in data["questions"]]
    questions = every * 2 if long else every[::4]
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content=data["persona"]["instructions"])
    ctx.add_message(role="assistant", content="Hello! I'm Ava. How can I help you today?")
    rows = []
    for i, question in enumerate(questions):
        ctx.add_message(role="user", content=question)
        started, first, text = time.perf_counter(), None, ""
        stream = llm.chat(chat_ctx=ctx)
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                first = first if first is not None else time.perf_counter() - started
                text += chunk.delta.content
        if i > 0 and stream.timings:
            rows.append({"turn": i + 1, "question": question, "prompt_n": stream.timings.get("prompt_n"),
                         "cache_n": stream.timings.get("cache_n"), "first_s": round(first or 0, 3)})
        ctx.add_message(role="assistant", content=text)
        if stream.read_ahead is not None:  # a verbatim answer is read while it is spoken
            await stream.read_ahead
        if hasattr(llm, "read_ahead"):  # the reply stored, the live worker reads ahead
            await llm.read_ahead(ctx)
        await asyncio.sleep(SPOKEN_S)
    return rows


def _run(code_dir: Path, long: bool) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(code_dir)}
    child = ["--child"] + (["--long"] if long else [])
    out = subprocess.run([sys.executable, "-m", "bench.llm_turns", *child], cwd=code_dir,
                         env=env, capture_output=True, text=True, timeout=3600, check=True)
    rows: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", default="", help="a commit to compare with (git worktree)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--long", action="store_true",
                    help="a long call: every question twice over (88 turns)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(conversation(args.long))))
        return
    runs: dict[str, list[dict[str, Any]]] = {"this checkout": []}
    with tempfile.TemporaryDirectory(prefix="llm-turns-") as tmp:
        other = Path(tmp) / "other"
        if args.against:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach",
                            str(other), args.against], check=True)
            # the bench's own file, so the other commit's code runs the same conversation
            (other / "bench" / "llm_turns.py").write_text(Path(__file__).read_text())
            runs[args.against] = []
        try:
            for _ in range(args.rounds):
                if args.against:
                    runs[args.against] += _run(other, args.long)
                runs["this checkout"] += _run(ROOT, args.long)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                str(other)], check=False)
    def p95(values: list[float]) -> float:
        return sorted(values)[max(0, round(0.95 * len(values)) - 1)]

    summary = {
        name: {"turns": len(rows),
               "prompt_tokens_median": statistics.median(r["prompt_n"] for r in rows),
               "prompt_tokens_p95": p95([r["prompt_n"] for r in rows]),
               "prompt_tokens_max": max(r["prompt_n"] for r in rows),
               "first_token_median_s": round(statistics.median(r["first_s"] for r in rows), 3),
               "first_token_p95_s": p95([r["first_s"] for r in rows]),
               "first_token_max_s": max(r["first_s"] for r in rows)}
        for name, rows in runs.items() if rows
    }
    command = "python -m bench.llm_turns" + (" --long" if args.long else "") + \
        (f" --against {args.against}" if args.against else "") + f" --rounds {args.rounds}"
    name = "llm-turns-long" if args.long else "llm-turns"
    out = {"command": command, "when": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average": [round(x, 2) for x in os.getloadavg()],
           "summary": summary, "turns": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        "# The local LLM over a conversation: prompt tokens and first token per later turn", "",
        f"Command: `.venv/bin/{command}` ({out['when']}). Machine: {out['machine']}, load average "
        f"{tuple(out['load_average'])}. SmolLM2-135M on one thread, temperature 0, {SPOKEN_S} s "
        "between turns; generated later turns only (verbatim answers take no model time).", "",
        "| Code | turns | prompt tokens evaluated p50 / p95 / max | first token p50 / p95 / max |",
        "|---|---|---|---|",
    ]
    for code, s in summary.items():
        lines.append(f"| {code} | {s['turns']} | {s['prompt_tokens_median']} / "
                     f"{s['prompt_tokens_p95']} / {s['prompt_tokens_max']} | "
                     f"{s['first_token_median_s']} s / {s['first_token_p95_s']} s / "
                     f"{s['first_token_max_s']} s |")
    if args.long:
        lines += ["", "Per generated turn (turn number in the call: prompt tokens evaluated, "
                  "first token in s):", ""]
        for code, rows in runs.items():
            lines.append(f"- {code}: " + ", ".join(
                f"{r['turn']}: {r['prompt_n']}, {r['first_s']}" for r in rows))
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
