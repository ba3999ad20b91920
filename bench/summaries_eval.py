"""Summaries scored against calls whose facts are known (bench/evals/summaries.yaml).

Facts kept: the required facts found in what is stored (summary, key points, action items).
Facts invented: listed plausible words the call never contained that the summary holds.
Action items right: "none" when nobody asked for anything to be done, else the asked thing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from config.settings import Settings
from tasks.summaries import HeuristicSummarizer, Summarizer, Utterance, default_summarizer

EVALS = Path(__file__).resolve().parent / "evals"


def _has(text: str, fact: str) -> bool:
    low = text.lower()
    return any(alt.strip().lower() in low for alt in str(fact).split("|"))


def score_summarizer(
    summarizer: Summarizer, calls: list[dict[str, Any]], log: Callable[[str], None]
) -> dict[str, Any]:
    kept = total = invented = actions_right = 0
    details = []
    for call in calls:
        utterances = [Utterance(str(s), str(t)) for s, t in call["lines"]]
        result = summarizer.summarize(utterances)
        stored = " ".join([result.summary, *result.key_points, *result.action_items])
        found = [f for f in call["keep"] if _has(stored, f)]
        made_up = [w for w in call["invented"] if _has(stored, w)]
        actions = " ".join(result.action_items)
        if call["actions"] == "none":
            right = not result.action_items
        else:
            right = bool(result.action_items) and all(_has(actions, a) for a in call["actions"])
        kept += len(found)
        total += len(call["keep"])
        invented += len(made_up)
        actions_right += right
        details.append(
            {
                "id": call["id"],
                "missing": [f for f in call["keep"] if f not in found],
                "invented": made_up,
                "actions_right": right,
                "summary": result.summary,
                "key_points": result.key_points,
                "action_items": result.action_items,
                "model": result.model,
            }
        )
        log(f"[summaries/{summarizer.name}] {call['id']}: missing={details[-1]['missing']} "
            f"invented={made_up} actions_ok={right} :: {result.summary!r} {result.action_items}")
    return {
        "facts_kept": round(kept / total, 3),
        "invented": invented,
        "actions_right": round(actions_right / len(calls), 3),
        "calls": len(calls),
        "details": details,
    }


def run_summaries(settings: Settings, *, log: Callable[[str], None]) -> dict[str, Any]:
    """The extractive summarizer alone, and the one the back office uses with these settings
    (the embedded model checked against the transcript, or the configured OpenAI-compatible
    server)."""
    calls: list[dict[str, Any]] = yaml.safe_load((EVALS / "summaries.yaml").read_text())["calls"]
    out = {"extractive": score_summarizer(HeuristicSummarizer(), calls, log)}
    shipped = default_summarizer(settings)
    if shipped.name != HeuristicSummarizer.name:
        out[shipped.name] = score_summarizer(shipped, calls, log)
    return out
