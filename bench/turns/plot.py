"""Per-voice plots of a ``bench.turns.call`` run, so a reader sees each voice against the
targets at a glance, not only the pooled medians.

    .venv/bin/python -m bench.turns.plot bench/results/turns-call-LABEL.json

writes ``turns-call-LABEL.svg`` beside it (``bench.turns.call`` does so itself). One row per
voice: each turn a dot, its p50 a bar; the targets as dashed lines. Plain SVG, no plotting
library: the bench runs in the project's own environment.
"""

from __future__ import annotations

import argparse
import json
import statistics
from html import escape
from pathlib import Path
from typing import Any

# issue #11's targets: heard p50 / p95, and the caller's first sound to the avatar's silence
HEARD_P50_TARGET = 1.2
HEARD_P95_TARGET = 1.8
STOP_TARGET = 0.5
GROUP_COLOURS = {"human": "#2ca02c", "natural": "#1f77b4", "synthetic": "#ff7f0e"}


def _panel(title: str, rows: list[tuple[str, str, list[float], list[float], str]],
           targets: list[tuple[float, str]], x_label: str, x_max: float, y0: int,
           width: int) -> tuple[list[str], int]:
    """rows: (voice, group, values, red values, note). Returns the SVG parts and the height."""
    left, right, row_h = 200, 170, 18
    def px(x: float) -> float: return left + (width - left - right) * min(x, x_max) / x_max
    h = 48 + row_h * max(1, len(rows)) + 40
    top = y0 + 44
    bottom = top + row_h * max(1, len(rows))
    parts = [f'<text x="10" y="{y0 + 18}" font-weight="bold">{escape(title)}</text>',
             f'<line x1="{left}" y1="{bottom}" x2="{px(x_max)}" y2="{bottom}" stroke="black"/>',
             f'<text x="{left}" y="{bottom + 30}">{escape(x_label)}</text>']
    step = 0.5 if x_max > 2 else 0.25
    t = 0.0
    while t <= x_max + 1e-9:
        parts.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{bottom}" stroke="#eee"/>'
                     f'<text x="{px(t) - 8:.1f}" y="{bottom + 14}">{t:.2g}</text>')
        t += step
    for value, label in targets:
        parts.append(f'<line x1="{px(value):.1f}" y1="{top - 6}" x2="{px(value):.1f}" y2="{bottom}" '
                     f'stroke="#c33" stroke-dasharray="4"/>'
                     f'<text x="{px(value) + 3:.1f}" y="{top - 8}" fill="#c33">{escape(label)}</text>')
    for k, (voice, group, values, red, note) in enumerate(rows):
        y = top + row_h * k + row_h / 2
        colour = GROUP_COLOURS.get(group, "#888")
        parts.append(f'<text x="10" y="{y + 4:.1f}">{escape(voice)}</text>'
                     f'<text x="{left - 62}" y="{y + 4:.1f}" fill="{colour}">{escape(group)}</text>')
        for v in values:
            parts.append(f'<circle cx="{px(v):.1f}" cy="{y:.1f}" r="3.5" fill="{colour}" '
                         f'fill-opacity="0.7"><title>{v:.3f} s</title></circle>')
        for v in red:
            parts.append(f'<circle cx="{px(v):.1f}" cy="{y:.1f}" r="5" fill="none" stroke="#c00" '
                         f'stroke-width="1.5"><title>{v:.3f} s</title></circle>')
        if values:
            m = statistics.median(values)
            parts.append(f'<line x1="{px(m):.1f}" y1="{y - 7:.1f}" x2="{px(m):.1f}" y2="{y + 7:.1f}" '
                         f'stroke="black" stroke-width="2"/>')
        if note:
            parts.append(f'<text x="{width - right + 8}" y="{y + 4:.1f}">{escape(note)}</text>')
    return parts, h


def svg(out: dict[str, Any]) -> str:
    """The run's complete turns (heard latency) and, if any, its speech over the agent."""
    width = 860
    parts: list[str] = []
    y = 0
    turns = [t for t in out.get("turns", []) if t.get("kind") == "complete"]
    if turns:
        cuts = {c["voice"]: c for c in out.get("hesitation_calls", [])}
        voices = sorted({(t["group"], t["voice"]) for t in turns})
        rows = []
        for group, voice in voices:
            mine = [t for t in turns if t["voice"] == voice]
            heard = [t["heard_s"] for t in mine if t["heard_s"] is not None]
            by_max = [t["heard_s"] for t in mine if t["heard_s"] is not None and t.get("end_of_turn_s")
                      is not None and t["end_of_turn_s"] >= out["max_delay"] - 0.05]
            note = f"{len(heard)}/{len(mine)} answered"
            if (c := cuts.get(voice)) is not None:
                note += f"; {c['cuts']}/{c['utterances']} hesit. cut"
            rows.append((voice, group, heard, by_max, note))
        top = max((v for r in rows for v in r[2]), default=2.0)
        p, h = _panel("Heard latency per voice (complete utterances; red ring: ended by the max delay)",
                      rows, [(HEARD_P50_TARGET, "p50 goal"), (HEARD_P95_TARGET, "p95 goal")],
                      "the caller's end of speech to the first reply audio it hears (s); bar: p50",
                      max(2.5, top + 0.2), y, width)
        parts += p
        y += h
    over = out.get("spoken_over") or []
    if over:
        voices = sorted({(r["group"], r["voice"]) for r in over})
        rows = []
        for group, voice in voices:
            ints = [r for r in over if r["voice"] == voice and r["kind"] == "interruption" and r["spoke_over"]]
            bcs = [r for r in over if r["voice"] == voice and r["kind"] == "backchannel" and r["spoke_over"]]
            stops = [r["stop_s"] for r in ints if r["stop_s"] is not None]
            taken = [r["longest_gap_s"] or 0.0 for r in bcs if r.get("user_turns")]
            note = f"{len(stops)}/{len(ints)} stopped; {len(taken)}/{len(bcs)} bc. taken"
            rows.append((voice, group, stops, [], note))
            if bcs:
                gaps = [r["longest_gap_s"] for r in bcs if r.get("longest_gap_s") is not None]
                rows.append(("  backchannels", group, gaps, taken, "quiet after them"))
        top = max((v for r in rows for v in r[2]), default=1.0)
        p, h = _panel("Speech over the agent: interruptions (caller's first sound to the avatar's "
                      "silence) and the longest quiet after a backchannel (red ring: taken as a turn)",
                      rows, [(STOP_TARGET, "0.5 s goal")], "seconds at the caller; bar: p50",
                      max(1.0, top + 0.2), y, width)
        parts += p
        y += h
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{max(y, 60)}" '
            f'font-family="sans-serif" font-size="11"><rect width="{width}" height="{max(y, 60)}" fill="white"/>')
    foot = f'<text x="10" y="{max(y, 60) - 4}" fill="#666">{escape(out.get("command", ""))[:150]}</text>'
    return "\n".join([head, *parts, foot, "</svg>"]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result", type=Path, help="a bench.turns.call result JSON")
    args = ap.parse_args()
    out = json.loads(args.result.read_text())
    path = args.result.with_suffix(".svg")
    path.write_text(svg(out))
    print(path)


if __name__ == "__main__":
    main()
