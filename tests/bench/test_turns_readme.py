"""The README's turn-taking figures are the committed room run's, and its targets are judged
the way issue 11 states them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from bench.turns.call import RESULTS, lip_stats, summarize_over, targets
from bench.turns.readme import BEGIN, END, README, render, replace_block


def _run(**summary: Any) -> dict[str, Any]:
    return {"command": "cmd", "when": "2026-12-03T00:00:00", "machine": "x86_64, 2 cores",
            "load_average": [1.0, 1.0, 1.0], "summary": summary}


def _met(out: dict[str, Any]) -> dict[str, bool]:
    return {name: met for name, _, _, met in targets(out)}


def test_the_readme_block_is_the_named_run_rendered() -> None:
    """Edit the block by hand, or the result file under it, and this fails: the README says
    what the benchmark measured."""
    text = README.read_text()
    assert BEGIN in text and END in text
    block = text[text.index(BEGIN): text.index(END) + len(END)]
    label = re.search(r"bench/results/turns-call-([\w.-]+)\.\{md,json,svg\}", block)
    assert label, "the block names no result file"
    out = json.loads((RESULTS / f"turns-call-{label.group(1)}.json").read_text())
    assert render(out, label.group(1)) == block


def test_replace_block_needs_both_markers() -> None:
    with pytest.raises(ValueError, match="lacks the markers"):
        replace_block("no markers here", "x")
    assert replace_block(f"a {BEGIN} old {END} b", "new") == "a new b"


def test_a_turn_by_the_max_delay_or_a_slow_median_misses() -> None:
    complete = {"turns": 24, "answered": 24, "heard_p50": 1.15, "heard_p95": 1.7,
                "ended_by_max_delay": 0}
    assert all(_met(_run(complete=complete)).values())
    met = _met(_run(complete={**complete, "ended_by_max_delay": 1}))
    assert not met["turns ended by the max delay"]
    met = _met(_run(complete={**complete, "heard_p50": 1.21}))
    assert not met["heard latency p50, complete utterances"]
    # an unanswered turn has no latency: the median of the others must not pass for it
    met = _met(_run(complete={**complete, "answered": 23}))
    assert not met["heard latency p50, complete utterances"]


def test_lip_sync_counts_sound_first_against_the_goal() -> None:
    rows = [{"lip_offset_s": v} for v in (-0.03, -0.01, 0.0, 0.01, 0.02)] + [{"lip_offset_s": None}]
    lip = lip_stats(rows)
    assert lip["lip_turns"] == 5 and lip["lip_sound_first_over_40ms"] == 0
    name = "mouth minus sound, p50 and p95 of turns"
    assert _met(_run(lip_sync=lip))[name]
    late = lip_stats([{"lip_offset_s": v} for v in (0.0, 0.02, 0.05, 0.06, 0.07)])
    assert late["lip_sound_first_over_40ms"] == 3
    assert not _met(_run(lip_sync=late))[name]


def test_interruptions_and_backchannels() -> None:
    over = {"interruptions": 12, "interruptions_stopped": 12, "stop_p95": 0.48,
            "backchannels": 12, "backchannels_taken_as_turn": 0, "backchannels_went_on": 12}
    assert all(_met(_run(spoken_over=over)).values())
    met = _met(_run(spoken_over={**over, "stop_p95": 0.51}))
    assert not met["interruptions: caller's first sound to the avatar's silence, p95"]
    met = _met(_run(spoken_over={**over, "backchannels_taken_as_turn": 1}))
    assert not met["backchannels taken as the caller's turn"]


def test_a_short_reply_heard_to_its_end_went_on_after_a_backchannel() -> None:
    """Quiet 2 s after an "Mm-hm." is the reply's end when it was stored whole and heard to
    its last word; a reply stored as cut, or not heard to its end, was dropped."""
    row = {"kind": "backchannel", "spoke_over": True, "stop_s": 2.1, "resumed_s": None,
           "longest_gap_s": 1.8, "user_turns": [], "reply_cut": False, "words_missing": 0}
    assert summarize_over([row])["backchannels_went_on"] == 1
    assert summarize_over([{**row, "reply_cut": True}])["backchannels_went_on"] == 0
    assert summarize_over([{**row, "words_missing": 3}])["backchannels_went_on"] == 0
    assert summarize_over([{**row, "user_turns": ["Mm-hm."]}])["backchannels_went_on"] == 0


def test_render_names_the_result_file() -> None:
    out = _run(complete={"turns": 1, "answered": 1, "heard_p50": 1.0, "heard_p95": 1.0,
                         "ended_by_max_delay": 0, "end_of_turn_p50": 0.8, "end_of_turn_p95": 0.8,
                         "llm_ttft_p50": 0.2, "mouth_p50": 1.0},
               by_group={"human": {"turns": 1, "heard_p50": 1.0}},
               by_split={"holdout": {"heard_p50": 1.0, "heard_p95": 1.0}},
               by_voice={"v": {"heard_p50": 1.0}})
    block = render(out, "x1")
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "bench/results/turns-call-x1.{md,json,svg}" in block
    assert "| heard latency p50, complete utterances | <= 1.2 s | 1.0 s | yes |" in block
