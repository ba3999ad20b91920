"""Backchannels against short interruptions, offline: the local STT's verdict on speech over
the agent, on voices the project did not make.

    HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.backchannel

Over the agent, "mm-hm" must not stop it and "Stop." must. Through the room, a robotic
"Uh-huh." was heard by Whisper as "That's what?" and taken as a turn in most runs (1 of 12
backchannels). The corpus has 12 backchannels and only long interruptions, too few to choose a
rule on; this bench renders each form below in every synthetic and natural voice of the corpus
(one condition per pair, by hash: noise, echo, speed, pitch), a quarter held out by hash, and a
``final`` set of other forms written after the rule was chosen. Each clip goes through the
decode the STT makes at the end of speech over the agent (the short window; the full window if
that looks wrong), then through the verdict of 98b5226 (``before``: a backchannel, confidence
under 0.35 or a hum's guessed words are no words) and today's
(``live.providers.local_stt.over_agent_words``). Reported per split and voice group; writes
``bench/results/turns-backchannel.{json,md}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bench.turns.corpus import LEAD_S, RATE, VOICES, Item, read_wav, render, speech_bounds

RESULTS = Path(__file__).resolve().parents[1] / "results"
OUT = Path("var/corpus/backchannel")
COMMAND = "HF_HUB_OFFLINE=1 .venv/bin/python -m bench.turns.backchannel"

# what callers say to show they follow (the corpus's six and others)
BACKCHANNELS = ["Mm-hm.", "Yeah.", "Okay.", "Right.", "Uh-huh.", "I see.", "Mm.", "Yep.",
                "Sure.", "Got it.", "Oh, okay.", "Yeah, yeah."]
# what callers say to stop the agent: short ones are the hard case
INTERRUPTIONS = ["Stop.", "Wait.", "No.", "Hold on.", "What?", "Excuse me.", "Sorry?", "Hang on.",
                 "No, no.", "Nope.", "Why?", "Slow down.", "Say that again.", "That's wrong.",
                 "Not that one.", "Wait, I have a question.", "Hold on, stop there."]
# written after the rule was chosen, run once: forms the rule was not tuned on
FINAL_BACKCHANNELS = ["Mhm.", "Yes.", "Alright.", "Uh-huh, yeah.", "Okay, okay.", "Oh."]
FINAL_INTERRUPTIONS = ["Hold it.", "Pardon?", "No, stop.", "Wait a second.", "Enough.",
                       "Cancel that.", "That is not what I asked."]
CONDITIONS = ["clean", "noise", "echo", "fast", "slow", "high", "low", "noise+echo"]
# the VAD hands the STT its speech with some quiet around it
PAD_BEFORE_S, PAD_AFTER_S = 0.1, 0.25


@dataclass(frozen=True)
class Clip:
    id: str
    kind: str  # "backchannel" | "interruption"
    text: str
    voice: str
    group: str
    condition: str
    split: str


def _h(s: str) -> int:
    return int(hashlib.sha256(s.encode()).hexdigest(), 16)


def clips(final: bool = False) -> list[Clip]:
    sets = ((("backchannel", FINAL_BACKCHANNELS), ("interruption", FINAL_INTERRUPTIONS)) if final
            else (("backchannel", BACKCHANNELS), ("interruption", INTERRUPTIONS)))
    out = []
    for kind, texts in sets:
        for k, text in enumerate(texts):
            for v in VOICES:
                cid = f"{'f' if final else ''}{kind[0]}{k:02d}-{v.id}"
                split = "final" if final else ("holdout" if _h(cid + "/split") % 4 == 0 else "dev")
                out.append(Clip(cid, kind, text, v.id, v.group,
                                CONDITIONS[_h(cid) % len(CONDITIONS)], split))
    return out


def _audio(c: Clip) -> np.ndarray:
    # rendered clips are kept per version of the texts, so an edited list never reuses a stale one
    out = OUT / f"{_h(repr((BACKCHANNELS, INTERRUPTIONS, FINAL_BACKCHANNELS, FINAL_INTERRUPTIONS))) % 10**10:010d}"
    path = out / f"{c.id}.wav"
    if not path.exists():
        render(Item(c.id, "complete", c.text, c.voice, c.group, c.condition), out)  # type: ignore[arg-type]
    audio, _ = read_wav(path)
    lead = int(LEAD_S * RATE) - 800  # the speech starts at LEAD_S; its edges are found
    a, b = speech_bounds(audio[lead:])
    a, b = a + lead, b + lead
    return audio[max(0, a - int(PAD_BEFORE_S * RATE)): b + int(PAD_AFTER_S * RATE)]


def run(model: str, limit: int | None, final: bool) -> dict[str, Any]:
    from config.settings import load_settings
    from engines.store import process_models
    from engines.whisper import get_whisper

    settings = load_settings()
    engine = get_whisper(process_models(settings), model)
    window = settings.stt.window_seconds
    rows = []
    todo = clips() + (clips(final=True) if final else [])
    todo = todo[:limit] if limit else todo
    for n, c in enumerate(todo):
        audio = _audio(c)
        voiced = audio.size / RATE - PAD_BEFORE_S - PAD_AFTER_S
        res = engine.transcribe_sync(audio, "en", window_seconds=window, full_retry=False)
        if not res.trusted:  # as the STT's final: Whisper's best, on the full window
            res = engine.transcribe_sync(audio, "en")
        rows.append({
            "id": c.id, "kind": c.kind, "said": c.text, "voice": c.voice, "group": c.group,
            "condition": c.condition, "split": c.split, "heard": res.text,
            "confidence": round(res.confidence, 3), "voiced_s": round(voiced, 3),
        })
        if n % 50 == 0:
            print(f"{n}/{len(todo)} {c.id}: {c.text!r} heard {res.text!r}", flush=True)
    return {"model": model, "window": window, "rows": rows}


def words_before(row: dict[str, Any]) -> bool:
    """The verdict of 98b5226 at the end of speech over the agent."""
    from live.providers.local_stt import (
        EARLY_MIN_CONFIDENCE,
        hum_guess,
        is_backchannel,
        spoken_words,
    )

    t = row["heard"]
    backchannel = is_backchannel(t) and " ".join(spoken_words(t)) != "all right"  # added since
    return bool(t) and not (backchannel or row["confidence"] < EARLY_MIN_CONFIDENCE
                            or hum_guess(t, row["voiced_s"]))


def words_now(row: dict[str, Any]) -> bool:
    from live.providers.local_stt import over_agent_words

    return over_agent_words(row["heard"], row["confidence"], row["voiced_s"])


def _table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    bcs = [r for r in rows if r["kind"] == "backchannel"]
    ints = [r for r in rows if r["kind"] == "interruption"]
    return {"backchannels": len(bcs), "interruptions": len(ints),
            "before": {"bc_as_words": sum(words_before(r) for r in bcs),
                       "int_passed_over": sum(not words_before(r) for r in ints)},
            "now": {"bc_as_words": sum(words_now(r) for r in bcs),
                    "int_passed_over": sum(not words_now(r) for r in ints)}}


def report(result: dict[str, Any]) -> dict[str, Any]:
    rows = result["rows"]
    summary: dict[str, Any] = {}
    for split in ("dev", "holdout", "final"):
        sub = [r for r in rows if r["split"] == split]
        if not sub:
            continue
        summary[split] = {"all": _table(sub)}
        for g in sorted({r["group"] for r in sub}):
            summary[split][g] = _table([r for r in sub if r["group"] == g])
    return {"summary": summary}


def render_md(out: dict[str, Any]) -> str:
    s = out["summary"]
    lines = [
        "# Backchannels against short interruptions, offline (the STT's verdict over the agent)",
        "",
        f"Command: `{out['command']}` ({out['when']}). Machine: {out['machine']}. Whisper "
        f"{out['model']}, {out['window']} s window. {len(out['rows'])} clips in {len(VOICES)} "
        f"voices, one condition each: {len(BACKCHANNELS)} backchannel forms and "
        f"{len(INTERRUPTIONS)} interruptions (a quarter of the clips held out), and a final set "
        f"of {len(FINAL_BACKCHANNELS)} and {len(FINAL_INTERRUPTIONS)} other forms.",
        "",
        "A backchannel heard as words stops the agent (a turn of the caller's, or a reply that",
        "stays paused); an interruption passed over does not stop it. Before: the verdict of",
        "98b5226; now: `over_agent_words` (a stop word counts from confidence 0.2, and \"All",
        "right.\" is a backchannel as \"Alright.\" was).",
        "",
        "| split | voices | backchannels | heard as words, before | now | interruptions | passed over, before | now |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split, groups in s.items():
        for g, t in groups.items():
            lines.append(
                f"| {split} | {g} | {t['backchannels']} | {t['before']['bc_as_words']} | "
                f"{t['now']['bc_as_words']} | {t['interruptions']} | "
                f"{t['before']['int_passed_over']} | {t['now']['int_passed_over']} |")
    wrong = [r for r in out["rows"] if (r["kind"] == "backchannel") == words_now(r)]
    lines += ["", f"Clips today's verdict gets wrong ({len(wrong)}):", "",
              "| clip | said | heard | confidence | before |", "|---|---|---|---|---|"]
    for r in wrong:
        right_before = (r["kind"] == "backchannel") != words_before(r)
        lines.append(f"| {r['id']} ({r['condition']}, {r['split']}) | {r['said']} | {r['heard']} | "
                     f"{r['confidence']} | {'right' if right_before else 'wrong'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny.en")
    ap.add_argument("--limit", type=int, default=None, help="first N clips only (a quick look)")
    ap.add_argument("--final", action="store_true", help="also the final set (run once, at the end)")
    ap.add_argument("--from-json", type=Path, default=None, help="re-report a saved run")
    args = ap.parse_args()
    if args.from_json:
        result = json.loads(args.from_json.read_text())
    else:
        result = run(args.model, args.limit, args.final)
        result |= {"command": COMMAND + (f" --model {args.model}" if args.model != "tiny.en" else "")
                   + (" --final" if args.final else ""),
                   "when": datetime.now(UTC).isoformat(timespec="seconds"),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    result |= report(result)
    if not args.limit:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "turns-backchannel.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "turns-backchannel.md").write_text(render_md(result))
    print(render_md(result))


if __name__ == "__main__":
    main()
