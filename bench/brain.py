"""The agent's brain, scored: persona, answers from the operator's knowledge, call summaries.

Every question goes through the real ``AgentSession`` with the configured LLM (the embedded
SmolLM2-135M by default; ``LLM__PROVIDER=openai LLM__BASE_URL=...`` for any OpenAI-compatible
server) and the real ``AvatarAgent``, in a fresh session, several samples at the configured
temperature. A sample passes when the reply holds an expected keyword and no forbidden one
(``bench/evals/*.yaml``). "before" is the plain prompt without the guard, "after" the
prompt and guard that ship; both run in the same process, interleaved.

    .venv/bin/python -m bench.brain                 # all three, 3 samples
    .venv/bin/python -m bench.brain --only persona --samples 2

Writes bench/results/brain.json and brain.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from livekit.agents import AgentSession
from livekit.agents.llm import ChatMessage
from livekit.agents.voice.run_result import RunResult

from bench.summaries_eval import run_summaries
from config.settings import Settings, load_settings
from engines.store import process_models
from live.agent import AvatarAgent
from live.persona import other_names
from live.providers import ProviderContext, create
from live.providers.local_llm import LocalLLM, Steering

EVALS = Path(__file__).resolve().parent / "evals"
GROUNDED_TTFT = 0.01  # below this the answer was not generated (a verbatim fact)
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Sample:
    category: str
    question: str
    reply: str
    passed: bool
    other_names: list[str]
    variant: str


@dataclass
class Variant:
    """One way of answering: an LLM and how the agent is built around it."""

    name: str
    llm: Any
    guard: bool
    knowledge: bool = True
    samples: list[Sample] = field(default_factory=list)


def load_eval(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((EVALS / f"{name}.yaml").read_text())
    return data


def passes(reply: str, expect: list[str], forbid: list[str], *, all_of: bool = False) -> bool:
    low = reply.lower()
    hits = [str(e).lower() in low for e in expect]
    ok = (all(hits) if all_of else any(hits)) if expect else bool(reply.strip())
    return ok and not any(str(f).lower() in low for f in forbid)


async def ask(
    llm: Any, instructions: str, question: str, *, guard: bool, knowledge: str | None = None
) -> str:
    """One question in a fresh session; the assistant's whole reply."""
    agent = AvatarAgent(instructions=instructions, knowledge=knowledge, guard=guard)
    async with AgentSession(llm=llm) as session:
        await session.start(agent)
        result: RunResult[Any] = await session.run(user_input=question)
    return " ".join((m.text_content or "").strip() for m in replies(result)).strip()


def replies(result: RunResult[Any]) -> list[ChatMessage]:
    """The assistant's messages among a run's events."""
    return [
        ev.item
        for ev in result.events
        if isinstance(ev.item, ChatMessage) and ev.item.role == "assistant"
    ]


async def run_questions(
    evaluation: str,
    variants: list[Variant],
    samples: int,
    *,
    log: Callable[[str], None],
) -> None:
    data = load_eval(evaluation)
    persona = data["persona"]
    knowledge = (EVALS / data["knowledge_file"]).read_text() if "knowledge_file" in data else None
    forbid_always = [str(f) for f in data.get("forbid_always", [])]
    all_of = evaluation == "knowledge"
    for q in data["questions"]:
        for _ in range(samples):
            for v in variants:  # interleaved: the machine's load hits every variant alike
                reply = await ask(
                    v.llm,
                    persona["instructions"],
                    q["q"],
                    guard=v.guard,
                    knowledge=knowledge if v.knowledge else None,
                )
                names = other_names(reply, persona["name"])
                ok = passes(
                    reply, q.get("expect", []), q.get("forbid", []) + forbid_always, all_of=all_of
                ) and not names
                v.samples.append(
                    Sample(q.get("category", evaluation), q["q"], reply, ok, names, v.name)
                )
                log(f"[{evaluation}/{v.name}] {'ok ' if ok else 'BAD'} {q['q']!r} -> {reply!r}")


def score(samples: list[Sample]) -> dict[str, Any]:
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for s in samples:
        by_cat[s.category].append(s.passed)
    cats = {c: round(sum(v) / len(v), 3) for c, v in by_cat.items()}
    core = [s.passed for s in samples if s.category in ("name", "role", "facts")]
    return {
        "per_category": cats,
        "name_role_facts": round(sum(core) / len(core), 3) if core else None,
        "overall": round(sum(s.passed for s in samples) / len(samples), 3) if samples else None,
        "replies_with_another_name": sum(bool(s.other_names) for s in samples),
        "samples": len(samples),
    }


async def later_turn_ttft(
    llm: Any, *, turns: int, knowledge: str | None, instructions: str, questions: list[str]
) -> list[float]:
    """LLM first-token latency (``llm_node_ttft``) on turns 2.. of one conversation."""
    agent = AvatarAgent(instructions=instructions, knowledge=knowledge)
    out: list[float] = []
    async with AgentSession(llm=llm) as session:
        await session.start(agent)
        for i, question in enumerate(questions[:turns]):
            result: RunResult[Any] = await session.run(user_input=question)
            for msg in replies(result):
                ttft = (msg.metrics or {}).get("llm_node_ttft")
                if i > 0 and ttft is not None:
                    out.append(float(ttft))
    return out


async def latency(llm: Any, rounds: int, log: Callable[[str], None]) -> dict[str, Any]:
    data = load_eval("knowledge")
    knowledge = (EVALS / data["knowledge_file"]).read_text()
    # knowledge questions (answered verbatim when retrieval is on) alternate with small talk
    # (always generated), so both kinds of answer are timed with retrieval on and off
    small_talk = [
        q["q"] for q in load_eval("persona")["questions"] if q["category"] == "smalltalk"
    ]
    facts = [q["q"] for q in data["questions"]]
    questions = [q for pair in zip(facts, small_talk * 4, strict=False) for q in pair]
    on: list[float] = []
    off: list[float] = []
    for r in range(rounds):  # alternate so both see the same load
        qs = questions[r * 4 :] + questions[: r * 4]
        off += await later_turn_ttft(
            llm, turns=7, knowledge=None, instructions=data["persona"]["instructions"], questions=qs
        )
        on += await later_turn_ttft(
            llm, turns=7, knowledge=knowledge, instructions=data["persona"]["instructions"], questions=qs
        )
    log(f"ttft off={off} on={on}")

    def stats(v: list[float]) -> dict[str, Any]:
        # a verbatim (grounded) answer needs no generation: its first token is immediate, so
        # generated answers are also reported on their own
        generated = [t for t in v if t >= GROUNDED_TTFT]
        return {
            "median_s": round(statistics.median(v), 3) if v else None,
            "max_s": round(max(v), 3) if v else None,
            "n": len(v),
            "generated_median_s": round(statistics.median(generated), 3) if generated else None,
            "generated_n": len(generated),
            "raw_s": [round(t, 4) for t in v],
        }

    return {"retrieval_off": stats(off), "retrieval_on": stats(on)}


def build_variants(settings: Settings, ctx: ProviderContext) -> list[Variant]:
    """"after" is the configured LLM as it ships. With the local LLM, "before" is the plain
    prompt with llama.cpp's default sampling and no guard (the previous release), and "model"
    the shipped prompt and guard without verbatim answers: what the 135M model itself says."""
    llm = create("llm", settings.llm.provider, settings.llm, ctx)
    if isinstance(llm, LocalLLM):

        def local(steer: Steering, min_p: float) -> LocalLLM:
            return LocalLLM(
                engine=llm._engine,
                temperature=settings.llm.temperature,
                max_tokens=settings.llm.max_tokens,
                steer=steer,
                min_p=min_p,
            )

        return [
            Variant("before", local("off", 0.05), guard=False),
            Variant("model", local("facts", 0.1), guard=True),
            Variant("after", llm, guard=True),
        ]
    return [Variant("before", llm, guard=False), Variant("after", llm, guard=True)]


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, load average "
        f"({load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f})"
    )


def write_markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The brain: persona, knowledge, summaries",
        "",
        f"Command: `{report['command']}` ({report['at']}). LLM: {report['llm']}, temperature "
        f"{report['temperature']}, {report['samples']} samples per question. "
        f"Machine: {report['machine']}.",
        "",
    ]
    if "persona" in report:
        lines += ["## Persona (bench/evals/persona.yaml)", ""]
        per = report["persona"]
        names = list(per)
        lines += ["| Category | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for cat in per[names[-1]]["per_category"]:
            lines.append(
                f"| {cat} | " + " | ".join(f"{per[n]['per_category'].get(cat, 0):.0%}" for n in names) + " |"
            )
        lines.append(
            "| **name + role + facts** | "
            + " | ".join(f"**{per[n]['name_role_facts']:.0%}**" for n in names)
            + " |"
        )
        lines.append(
            "| replies giving another name | "
            + " | ".join(str(per[n]["replies_with_another_name"]) for n in names)
            + " |"
        )
        lines.append("")
        lines.append(
            "before: the previous release (plain system prompt, llama.cpp's default sampling, "
            "no guard). model: persona examples as prior turns, matching persona facts and "
            "knowledge next to the caller's words, min_p 0.1, guard on the streamed answer: "
            "every word from the model. after (shipped): the same, plus verbatim answers when a "
            "retrieved fact, the persona's introduction or a refusal clearly answers."
        )
        lines.append("")
    if "knowledge" in report:
        k = report["knowledge"]
        lines += ["## Answers from the operator's knowledge (bench/evals/knowledge.yaml)", ""]
        if "on" in k:
            lines += ["| | exact fact in the answer |", "|---|---|"]
            lines.append(f"| without knowledge | {k['off']['overall']:.0%} |")
            lines.append(f"| with retrieval (shipped) | **{k['on']['overall']:.0%}** |")
        if "latency" in k:
            lat = k["latency"]
            lines += [
                "",
                "LLM first token on later turns (turns 2-7, `llm_node_ttft`), same run:",
                "",
                "| retrieval | median | max | n | median of generated answers (n) |",
                "|---|---|---|---|---|",
            ]
            for key in ("retrieval_off", "retrieval_on"):
                s = lat[key]
                lines.append(
                    f"| {key.split('_')[1]} | {s['median_s']} s | {s['max_s']} s | {s['n']} | "
                    f"{s.get('generated_median_s')} s ({s.get('generated_n')}) |"
                )
        lines.append("")
    if "summaries" in report:
        s = report["summaries"]
        lines += ["## Summaries (bench/evals/summaries.yaml)", ""]
        lines += ["| summarizer | facts kept | facts invented | action items right |", "|---|---|---|---|"]
        for name, r in s.items():
            lines.append(
                f"| {name} | {r['facts_kept']:.0%} | {r['invented']} | {r['actions_right']:.0%} |"
            )
        lines.append("")
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    ctx = process_models(settings)
    log: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.verbose else (
        lambda m: None
    )
    report: dict[str, Any] = {
        "command": "".join(f"{k}={os.environ[k]} " for k in ("LLM__WEIGHTS",) if k in os.environ)
        + ".venv/bin/python -m bench.brain " + " ".join(sys.argv[1:]),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "llm": f"{settings.llm.provider}/{settings.llm.model}"
        + (f" ({settings.llm.weights} weights, LLM__WEIGHTS)" if settings.llm.provider == "local" else "")
        + (" (custom base URL)" if settings.llm.base_url else ""),
        "temperature": settings.llm.temperature,
        "samples": args.samples,
    }
    started = time.monotonic()
    only = set(args.only or ["persona", "knowledge", "latency", "summaries"])
    variants: list[Variant] = []
    if "persona" in only or "knowledge" in only:
        variants = build_variants(settings, ctx)
    if "persona" in only:
        await run_questions("persona", variants, args.samples, log=log)
        report["persona"] = {v.name: score(v.samples) for v in variants}
        report["persona_replies"] = [s.__dict__ for v in variants for s in v.samples]
    if "knowledge" in only:
        after = variants[-1]
        off = Variant("off", after.llm, guard=True, knowledge=False)
        on = Variant("on", after.llm, guard=True, knowledge=True)
        await run_questions("knowledge", [off, on], args.samples, log=log)
        report["knowledge"] = {"off": score(off.samples), "on": score(on.samples)}
        report["knowledge_replies"] = [s.__dict__ for v in (off, on) for s in v.samples]
    if "latency" in only:
        llm = variants[-1].llm if variants else create("llm", settings.llm.provider, settings.llm, ctx)
        report.setdefault("knowledge", {})["latency"] = await latency(llm, args.latency_rounds, log)
    if "summaries" in only:
        report["summaries"] = run_summaries(settings, log=log)
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=3, help="samples per question")
    parser.add_argument("--latency-rounds", type=int, default=3)
    parser.add_argument(
        "--only", action="append", choices=["persona", "knowledge", "latency", "summaries"]
    )
    parser.add_argument("--out", default="brain", help="result file stem in bench/results")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every reply")
    args = parser.parse_args()
    report = asyncio.run(amain(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    md = write_markdown(report)
    (RESULTS / f"{args.out}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
