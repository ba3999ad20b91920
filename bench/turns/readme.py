"""The README's turn-taking figures, written from one ``bench.turns.call`` result file.

    .venv/bin/python -m bench.turns.readme LABEL            # rewrite the block in README.md
    .venv/bin/python -m bench.turns.readme LABEL --check    # exit 1 if the README differs

The block sits between two HTML comments in README.md; everything in it comes from
``bench/results/turns-call-LABEL.json`` (the command, the machine and its load included), so the
README's figures are the benchmark's, not copied by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.turns.call import RESULTS, ms, targets

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN = "<!-- bench.turns.call: begin (written by `python -m bench.turns.readme`) -->"
END = "<!-- bench.turns.call: end -->"


def _s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f} s"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{ms(v)} ms"


def render(out: dict[str, Any], label: str) -> str:
    """The README block for one run."""
    s = out["summary"]
    c = s.get("complete") or {}
    load = ", ".join(f"{x:.1f}" for x in out["load_average"])
    lines = [
        BEGIN,
        "",
        f"Through a real room, `{out['command']}` ({out['when'][:10]}; {out['machine']}, load "
        f"average {load} at the end, the caller, the SFU and the worker on the same cores): the "
        "corpus's utterances in voices that are not the agent's, spoken by the project's caller; "
        f"`bench/results/turns-call-{label}.{{md,json,svg}}` has every turn and voice.",
        "",
        "| Target (issue 11) | goal | measured | met |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {goal} | {measured} | {'yes' if met else '**no**'} |"
          for name, goal, measured, met in targets(out)),
        "",
    ]
    if c.get("turns"):
        groups = "; ".join(f"{g} {_s(st['heard_p50'])} ({st['turns']})"
                           for g, st in s["by_group"].items())
        split = s["by_split"].get("holdout") or {}
        voices = [st["heard_p50"] for st in s["by_voice"].values() if st["heard_p50"] is not None]
        within = sum(1 for v in voices if v <= 1.2)
        lines += [
            f"Heard latency p50 by group (turns): {groups}; held out {_s(split.get('heard_p50'))} "
            f"(p95 {_s(split.get('heard_p95'))}); per voice {_s(min(voices))} to {_s(max(voices))}, "
            f"{within} of {len(voices)} voices at most 1.2 s. End of turn (the worker's metric) "
            f"p50 {_s(c['end_of_turn_p50'])}, p95 {_s(c['end_of_turn_p95'])}; the LLM's first "
            f"token p50 {_s(c['llm_ttft_p50'])}; the first lip movement p50 {_s(c['mouth_p50'])}.",
            "",
        ]
    lip = s.get("lip_sync") or {}
    if lip.get("lip_turns"):
        lines += [
            f"Mouth minus sound at the caller, over {lip['lip_turns']} replies: p5 "
            f"{_ms(lip['lip_p5'])}, p50 {_ms(lip['lip_p50'])}, p95 {_ms(lip['lip_p95'])}; sound "
            f"first by more than 40 ms in {lip['lip_sound_first_over_40ms']}, mouth first by more "
            f"than 40 ms in {lip['lip_mouth_first_over_40ms']}.",
            "",
        ]
    o = s.get("spoken_over") or {}
    if o.get("interruptions") or o.get("backchannels"):
        lines += [
            f"Speaking over the answer: {o['interruptions']} interruptions, p50 "
            f"{_s(o['stop_p50'])} from the caller's first sound to the avatar's silence at the "
            f"caller; {o.get('interruptions_that_cut_the_reply')} stored as cut. "
            f"{o['backchannels']} backchannels: {o.get('backchannels_taken_as_turn')} taken as a "
            f"turn, the reply went on after {o.get('backchannels_went_on')}, the longest quiet "
            f"after one p50 {_s(o.get('backchannel_longest_gap_p50'))}.",
            "",
        ]
    lines.append(END)
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with its block replaced; a README without both markers is an error."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md lacks the markers {BEGIN!r} ... {END!r}")
    return text[:start] + block + text[end + len(END):]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("label", help="the run: bench/results/turns-call-LABEL.json")
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = ap.parse_args()
    path = RESULTS / f"turns-call-{args.label}.json"
    if not path.exists():
        sys.exit(f"no such result file: {path}")
    block = render(json.loads(path.read_text()), args.label)
    text = README.read_text()
    new = replace_block(text, block)
    if args.check:
        if new != text:
            sys.exit(f"README.md's turn-taking block is not the one {path.name} gives; run "
                     f"python -m bench.turns.readme {args.label}")
        return
    README.write_text(new)
    print(block)


if __name__ == "__main__":
    main()
