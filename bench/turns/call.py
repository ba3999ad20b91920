"""Turn-taking through a real room: the corpus spoken by the project's caller to the live worker.

    scripts/netns-run .venv/bin/python -m bench.turns.call                 # the default config
    scripts/netns-run .venv/bin/python -m bench.turns.call --label today \\
        --env LIMITS__TURN_DETECTOR=v1-mini --env LIMITS__ENDPOINTING_MIN_DELAY=0.5 \\
        --env LIMITS__ENDPOINTING_MAX_DELAY=3.0 --env LIMITS__PREEMPTIVE_TTS=false

Per voice, one call speaks its complete utterances and another its hesitations, each file cut
at its true end of speech (then the caller's microphone sends silence). The caller measures
*heard latency*: the end of its own speech to the first reply audio it receives. The worker's
stored turn metrics give the end-of-turn delay; a hesitation whose one utterance became two
user turns in the transcript was cut. Writes ``bench/results/turns-call[-LABEL].{json,md,svg}``.
``--summarize LABEL`` runs nothing: it applies this checkout's summary rules to a stored run's
rows again (a rule fixed after the run) and says so in the files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
from collections import defaultdict
from datetime import UTC, datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from bench.stack import embedded_stack, require_netns, wait_room_empty, wait_session_ended
from bench.turns import plot
from bench.turns.corpus import RATE, Item, build, load_manifest, read_wav, write_wav
from bench.wer import normalize
from cli.call import GAP_WINDOW_S, STOP_QUIET_S, STOPPED_WITHIN_S, CallOptions, run_call
from config.session import SessionSpec
from store.db import session_scope
from store.models import TranscriptLine, TurnMetric

RESULTS = Path(__file__).resolve().parents[1] / "results"


def _q(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _plan(items: list[Item], per_voice: int, split: str) -> list[tuple[str, str, list[Item]]]:
    """(voice, kind, items) per call."""
    chosen = [i for i in items if split == "all" or i.split == split]
    calls: list[tuple[str, str, list[Item]]] = []
    for voice in sorted({i.voice for i in chosen}):
        complete = [i for i in chosen if i.voice == voice and i.kind == "complete"][:per_voice]
        hes = [i for i in chosen if i.voice == voice and i.kind == "hesitation"]
        if complete:
            calls.append((voice, "complete", complete))
        if hes:
            calls.append((voice, "hesitation", hes))
    return calls


def _session_rows(db_url: str, session_id: str | None) -> tuple[list[TranscriptLine], list[TurnMetric]]:
    if not session_id:
        return [], []
    with session_scope(db_url) as db:
        lines = list(db.scalars(select(TranscriptLine).where(TranscriptLine.session_id == session_id)
                                .order_by(TranscriptLine.started_at)))
        turns = list(db.scalars(select(TurnMetric).where(TurnMetric.session_id == session_id)
                                .order_by(TurnMetric.id)))
        db.expunge_all()
    return lines, turns


def caller_turn_metrics(metrics: list[TurnMetric]) -> list[TurnMetric]:
    """The metrics of turns the caller ended, in order: the greeting's (the session's first
    row, no end of utterance) would otherwise pair each utterance with the turn before it."""
    return [m for m in metrics if m.end_of_utterance_delay is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-voice", type=int, default=5, help="complete utterances per voice")
    ap.add_argument("--split", choices=["dev", "holdout", "all"], default="all")
    ap.add_argument("--env", action="append", default=[], help="K=V for the live worker")
    ap.add_argument("--label", default="", help="suffix of the result files")
    ap.add_argument("--voices", default="", help="comma-separated voice ids (default: all)")
    ap.add_argument("--phases", default="turns,interruptions",
                    help="turns (complete and hesitation calls), interruptions (speaking over answers)")
    ap.add_argument("--summarize", metavar="LABEL",
                    help="no run: apply this checkout's summary rules again to a stored run's "
                         "rows (turns-call-LABEL.json) and write its files again")
    args = ap.parse_args()
    if args.summarize:
        print(render_md(resummarize(args.summarize)))
        return
    require_netns()
    rendered = build()
    items = load_manifest()
    if args.voices:
        keep = set(args.voices.split(","))
        items = [i for i in items if i.voice in keep]
    worker_env = dict(kv.split("=", 1) for kv in args.env)
    phases = set(args.phases.split(","))
    plan = _plan(items, args.per_voice, args.split) if "turns" in phases else []
    overs = [i for i in items if i.kind in ("interruption", "backchannel")] if "interruptions" in phases else []
    rows: list[dict[str, Any]] = []
    cuts: list[dict[str, Any]] = []
    spoken_over: list[dict[str, Any]] = []
    with embedded_stack("bench-turns", worker_env) as stack:
        utt_dir = stack.work / "utterances"
        utt_dir.mkdir(exist_ok=True)
        from config.settings import load_settings

        max_delay = load_settings(_env_file=None, **{}).limits.endpointing_max_delay
        if "LIMITS__ENDPOINTING_MAX_DELAY" in worker_env:
            max_delay = float(worker_env["LIMITS__ENDPOINTING_MAX_DELAY"])
        for n, (voice, kind, call_items) in enumerate(plan):
            paths = []
            for it in call_items:
                r = rendered[it.id]
                audio, _ = read_wav(Path(r.path))
                path = utt_dir / f"{it.id}.wav"
                write_wav(path, audio[: int(r.speech_end * RATE)])
                paths.append(path)
            room = f"turns-{n}"
            result = asyncio.run(run_call(stack.settings, CallOptions(
                room=room, utterances=list(paths), out_dir=stack.work / "calls", reply_timeout=60,
                spec=SessionSpec(greeting="Hi, I'm Ava."),
            )))
            print(f"{voice} {kind}: " + result.render().replace("\n", "\n  "), flush=True)
            wait_session_ended(stack.db_url, result.session_id)
            asyncio.run(wait_room_empty(stack.settings, room))
            lines, metrics = _session_rows(stack.db_url, result.session_id)
            metrics = caller_turn_metrics(metrics)
            user_lines = [ln for ln in lines if ln.speaker == "user"]
            if kind == "hesitation":
                cuts.append({"voice": voice, "group": call_items[0].group, "utterances": len(call_items),
                             "user_turns": len(user_lines), "cuts": max(0, len(user_lines) - len(call_items)),
                             "texts": [ln.text for ln in user_lines], "error": result.error})
            aligned = len(user_lines) == len(call_items) and len(metrics) >= len(call_items)
            for k, it in enumerate(call_items):
                turn = result.turns[k] if k < len(result.turns) else None
                m = metrics[k] if aligned else None
                rows.append({
                    "id": it.id, "voice": voice, "group": it.group, "kind": kind, "split": it.split,
                    "heard_s": turn.audio_latency_s if turn else None,
                    "spoke_end_unix": turn.spoke_end_unix if turn else None,
                    "room": room,
                    "mouth_s": turn.video_latency_s if turn else None,
                    "dropouts": turn.reply_dropouts if turn else None,
                    "dropout_s": turn.reply_dropout_s if turn else None,
                    # the reply's last caption against its last sound (negative: captions ahead)
                    "caption_end_s": turn.caption_end_lag_s if turn else None,
                    "caption_start_s": turn.caption_start_lag_s if turn else None,
                    # mouth minus sound at the caller (positive: the sound first), and the
                    # correlation it was read at (None: too weak to read an offset)
                    "lip_offset_s": turn.lip_offset_s if turn else None,
                    "lip_sync_r": turn.lip_sync_r if turn else None,
                    "end_of_turn_s": m.end_of_utterance_delay if m else None,
                    "transcription_s": m.transcription_delay if m else None,
                    "llm_ttft_s": m.llm_ttft if m else None,
                    "tts_ttfb_s": m.tts_ttfb if m else None,
                    "aligned": aligned,
                    "heard_text": user_lines[k].text if aligned else None,
                    "said": it.text,
                })
        for n, it in enumerate(overs):
            r = rendered[it.id]
            audio, _ = read_wav(Path(r.path))
            path = utt_dir / f"{it.id}.wav"
            write_wav(path, audio[: int(r.speech_end * RATE)])
            room = f"over-{n}"
            result = asyncio.run(run_call(stack.settings, CallOptions(
                room=room, utterances=[], out_dir=stack.work / "calls", reply_timeout=60,
                spec=SessionSpec(greeting="Hi, I'm Ava."),
                interrupt_prompt="Please tell me a long story about a lighthouse keeper and the sea.",
                # early in the answer: the small LLM's answers are two sentences, a few
                # seconds (the echo guard covers only the session's first speech, the greeting)
                interrupt_after=1.0,
                interrupt_with=path,
            )))
            itr = result.interruption
            print(f"{it.voice} {it.kind} {it.text!r}: " + result.render().replace("\n", "\n  "), flush=True)
            wait_session_ended(stack.db_url, result.session_id)
            asyncio.run(wait_room_empty(stack.settings, room))
            lines, _ = _session_rows(stack.db_url, result.session_id)
            # the stored transcript says whether the reply spoken over was cut (an
            # interruption) or played to its end (a backchannel the agent resumed after)
            replies = [ln for ln in lines if ln.speaker == "agent"][1:2]  # after the greeting
            spoken_over.append({
                "id": it.id, "voice": it.voice, "group": it.group, "kind": it.kind, "said": it.text,
                "spoke_over": bool(itr and itr.spoke_over),
                "stop_s": itr.stop_latency_s if itr else None,
                "longest_gap_s": itr.longest_gap_s if itr else None,
                "resumed_s": itr.resumed_s if itr else None,
                "reply_cut": replies[0].interrupted if replies else None,
                "stored_reply": replies[0].text if replies else None,
                "heard_reply": itr.heard_text if itr else None,
                **stored_against_heard(replies[0].text if replies else "",
                                       itr.heard_text if itr else ""),
                "user_turns": [ln.text for ln in lines if ln.speaker == "user"][1:],
                "error": result.error,
            })
        worker_log = str(stack.work / "live.log")
    summary = summarize(rows, cuts, max_delay)
    summary["spoken_over"] = summarize_over(spoken_over)
    cmd = "scripts/netns-run .venv/bin/python -m bench.turns.call"
    cmd += "".join(f" --env {kv}" for kv in args.env)
    cmd += f" --per-voice {args.per_voice} --split {args.split}" + (f" --label {args.label}" if args.label else "")
    if args.phases != "turns,interruptions":
        cmd += f" --phases {args.phases}"
    if args.voices:
        cmd += f" --voices {args.voices}"
    out = {"command": cmd, "when": datetime.now(UTC).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "load_average": [round(x, 2) for x in os.getloadavg()], "max_delay": max_delay,
           "worker_log": worker_log,
           "summary": summary, "hesitation_calls": cuts, "turns": rows, "spoken_over": spoken_over}
    stem = "turns-call" + (f"-{args.label}" if args.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    md = render_md(out)
    (RESULTS / f"{stem}.md").write_text(md)
    (RESULTS / f"{stem}.svg").write_text(plot.svg(out))
    print(md)


def resummarize(label: str) -> dict[str, Any]:
    """A stored run summarized again by this checkout's rules (the rows are as measured);
    the files say when, and keep the run's own command and time."""
    stem = f"turns-call-{label}"
    out: dict[str, Any] = json.loads((RESULTS / f"{stem}.json").read_text())
    summary = summarize(out["turns"], out["hesitation_calls"], out["max_delay"])
    summary["spoken_over"] = summarize_over(out["spoken_over"])
    out["summary"] = summary
    out["summarized"] = (f"{datetime.now(UTC).isoformat(timespec='seconds')}: "
                         f"python -m bench.turns.call --summarize {label}")
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(render_md(out))
    (RESULTS / f"{stem}.svg").write_text(plot.svg(out))
    return out


# Issue 11's lip-sync goal: the sound at most this far before the mouth (ATSC IS-191 asks
# +15/-45 ms; lips may lead the sound, as people's do, a little more).
LIP_SOUND_FIRST_MAX_S = 0.040
LIP_MOUTH_FIRST_MAX_S = 0.040


def lip_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mouth minus sound over the turns the caller could read an offset on."""
    offs = [r["lip_offset_s"] for r in rows if r.get("lip_offset_s") is not None]
    return {
        "lip_turns": len(offs),
        "lip_p5": _q(offs, 5), "lip_p50": _q(offs, 50), "lip_p95": _q(offs, 95),
        "lip_sound_first_over_40ms": sum(1 for v in offs if v > LIP_SOUND_FIRST_MAX_S),
        "lip_mouth_first_over_40ms": sum(1 for v in offs if v < -LIP_MOUTH_FIRST_MAX_S),
    }


def _stats(rows: list[dict[str, Any]], max_delay: float) -> dict[str, Any]:
    heard = [r["heard_s"] for r in rows if r["heard_s"] is not None]
    eot = [r["end_of_turn_s"] for r in rows if r["end_of_turn_s"] is not None]
    return {
        **lip_stats(rows),
        "turns": len(rows), "answered": len(heard),
        "heard_p50": _q(heard, 50), "heard_p95": _q(heard, 95),
        "end_of_turn_p50": _q(eot, 50), "end_of_turn_p95": _q(eot, 95),
        "ended_by_max_delay": sum(1 for v in eot if v >= max_delay - 0.05),
        # the min delay was not enough: the detector held the turn (an unsure transcript
        # waits LIMITS__ENDPOINTING_UNSURE_DELAY; the max delay counts here too)
        "ended_after_1s": sum(1 for v in eot if v >= 1.0),
        "mouth_p50": _q([r["mouth_s"] for r in rows if r["mouth_s"] is not None], 50),
        "llm_ttft_p50": _q([r["llm_ttft_s"] for r in rows if r["llm_ttft_s"] is not None], 50),
    }


def summarize(rows: list[dict[str, Any]], cuts: list[dict[str, Any]], max_delay: float) -> dict[str, Any]:
    complete = [r for r in rows if r["kind"] == "complete"]
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_voice: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in complete:
        by_group[r["group"]].append(r)
        by_voice[r["voice"]].append(r)
    n_hes = sum(c["utterances"] for c in cuts)
    return {
        "complete": _stats(complete, max_delay),
        "by_group": {g: _stats(v, max_delay) for g, v in sorted(by_group.items())},
        "by_voice": {v: _stats(r, max_delay) for v, r in sorted(by_voice.items())},
        "by_split": {s: _stats([r for r in complete if r["split"] == s], max_delay) for s in ("dev", "holdout")},
        "hesitations": n_hes,
        "hesitation_cuts": sum(c["cuts"] for c in cuts),
        "hesitation_cut_rate": round(sum(c["cuts"] for c in cuts) / n_hes, 3) if n_hes else None,
        # every reply the caller heard, hesitation calls' too
        "lip_sync": lip_stats(rows),
    }


def stored_against_heard(stored: str, heard: str) -> dict[str, int | None]:
    """Where the stored (cut) reply ends against what the caller heard of it (Whisper on the
    received sound): words stored past the last word heard, and heard words at the end that
    the stored text lacks. 0 and 0: the transcript keeps exactly what was played."""
    a, b = normalize(stored), normalize(heard)
    if not a or not b:
        return {"words_past": None, "words_missing": None}
    blocks = [m for m in SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks() if m.size]
    if not blocks:
        return {"words_past": None, "words_missing": None}
    last = blocks[-1]
    return {"words_past": len(a) - (last.a + last.size), "words_missing": len(b) - (last.b + last.size)}


def played_out(row: dict[str, Any]) -> bool:
    """The reply spoken over was stored whole (not interrupted) and heard to its last word."""
    return row.get("reply_cut") is False and row.get("words_missing") == 0


def summarize_over(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ints = [r for r in rows if r["kind"] == "interruption" and r["spoke_over"]]
    bcs = [r for r in rows if r["kind"] == "backchannel" and r["spoke_over"]]
    stops = [r["stop_s"] for r in ints if r["stop_s"] is not None]
    return {
        "interruptions": len(ints),
        "interruptions_stopped": sum(1 for r in ints if r["stop_s"] is not None and r["stop_s"] <= STOPPED_WITHIN_S),
        "stop_p50": _q(stops, 50), "stop_p95": _q(stops, 95),
        "interruptions_that_cut_the_reply": sum(1 for r in ints if r.get("reply_cut")),
        "backchannels": len(bcs),
        "backchannels_that_stopped_it": sum(1 for r in bcs if r["stop_s"] is not None and r["stop_s"] <= STOPPED_WITHIN_S),
        # the stored transcript: the backchannel became a turn of the caller's (and a new
        # reply), instead of being passed over ("reply cut" is no measure for them: the
        # caller hangs up while the resumed answer still plays, which also cuts it)
        "backchannels_taken_as_turn": sum(1 for r in bcs if r.get("user_turns")),
        # the reply went on after it: no long quiet, or the sound came back within the window,
        # or it played to its last word (stored whole, all of it heard: a short answer that
        # ends soon after the backchannel leaves a quiet that is its end, not a drop), and no
        # new turn; else the backchannel dropped the reply
        "backchannels_went_on": sum(1 for r in bcs if not r.get("user_turns") and (
            r["stop_s"] is None or r["stop_s"] > STOPPED_WITHIN_S or r.get("resumed_s") is not None
            or played_out(r))),
        "backchannel_longest_gap_p50": _q([r["longest_gap_s"] for r in bcs if r.get("longest_gap_s") is not None], 50),
        "backchannel_longest_gap_p95": _q([r["longest_gap_s"] for r in bcs if r.get("longest_gap_s") is not None], 95),
        "not_spoken_over": sum(1 for r in rows if not r["spoke_over"]),
        # interrupted replies: stored words past what the caller heard / heard but not stored
        "words_past": [r["words_past"] for r in ints if r.get("reply_cut") and r.get("words_past") is not None],
        "words_missing": [r["words_missing"] for r in ints if r.get("reply_cut") and r.get("words_missing") is not None],
    }


def ms(v: float | None) -> str:
    """Seconds as signed milliseconds ("+27"); empty for no value."""
    return "" if v is None else f"{v * 1000:+.0f}"


def targets(out: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Issue 11's targets against one run: (target, goal, measured, met). A phase the run
    left out is not listed."""
    s = out["summary"]
    rows: list[tuple[str, str, str, bool]] = []
    c = s.get("complete") or {}
    if c.get("turns"):
        p50, p95 = c["heard_p50"], c["heard_p95"]
        rows += [
            ("heard latency p50, complete utterances", "<= 1.2 s", f"{p50} s",
             p50 is not None and p50 <= 1.2 and c["answered"] == c["turns"]),
            ("heard latency p95", "<= 1.8 s", f"{p95} s", p95 is not None and p95 <= 1.8),
            ("turns ended by the max delay", "0", str(c["ended_by_max_delay"]),
             c["ended_by_max_delay"] == 0),
        ]
    if s.get("hesitations"):
        rate = s["hesitation_cut_rate"]
        rows.append(("hesitations cut", "<= 5%",
                     f"{s['hesitation_cuts']} of {s['hesitations']} ({rate:.1%})", rate <= 0.05))
    lip = s.get("lip_sync") or {}
    if lip.get("lip_turns"):
        p50, p95 = lip["lip_p50"], lip["lip_p95"]
        rows.append(("mouth minus sound, p50 and p95 of turns", "within 40 ms, sound never first by more",
                     f"{p50 * 1000:+.0f} / {p95 * 1000:+.0f} ms over {lip['lip_turns']} turns",
                     all(-LIP_MOUTH_FIRST_MAX_S <= v <= LIP_SOUND_FIRST_MAX_S for v in (p50, p95))))
    o = s.get("spoken_over") or {}
    if o.get("interruptions"):
        p95 = o["stop_p95"]
        rows.append(("interruptions: caller's first sound to the avatar's silence, p95", "<= 0.5 s",
                     f"{p95} s ({o['interruptions_stopped']} of {o['interruptions']} stopped)",
                     p95 is not None and p95 <= 0.5 and o["interruptions_stopped"] == o["interruptions"]))
    if o.get("backchannels"):
        taken = o.get("backchannels_taken_as_turn", 0)
        rows.append(("backchannels taken as the caller's turn", "0",
                     f"{taken} of {o['backchannels']} (the reply went on after "
                     f"{o.get('backchannels_went_on')})",
                     taken == 0 and o.get("backchannels_went_on") == o["backchannels"]))
    return rows


def render_md(out: dict[str, Any]) -> str:
    s = out["summary"]
    lines = [
        "# Turn-taking through a real room (the corpus, spoken by the project's caller)",
        "",
        f"Command: `{out['command']}` ({out['when']}). Machine: {out['machine']}, load average "
        f"{tuple(out['load_average'])}; the caller, the SFU and the worker share the two cores.",
        "Heard latency: the caller's end of speech to the first reply audio it receives. End of",
        f"turn: the worker's own metric. Max delay {out['max_delay']} s.",
        *([f"Summarized again from the run's rows by a later checkout's rules ({out['summarized']})."]
          if out.get("summarized") else []),
        "",
        "## Issue 11's targets",
        "",
        "| Target | goal | measured | met |",
        "|---|---|---|---|",
        *(f"| {name} | {goal} | {measured} | {'yes' if met else '**no**'} |"
          for name, goal, measured, met in targets(out)),
        "",
        "## Per voice",
        "",
        "Mouth minus sound: the offset at the caller between the reply's sound and the mouth's",
        "opening in the received frames (cross-correlated; positive: the sound first), over the",
        "turns where the correlation was strong enough to read one.",
        "",
        "| Complete utterances | turns | answered | heard p50 | heard p95 | end of turn p50 | p95 | ended after 1 s | ended by max delay | LLM first token p50 | first lip movement p50 | mouth minus sound p50 (ms) | p95 (ms) | sound first by > 40 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, st: dict[str, Any]) -> str:
        return (f"| {name} | {st['turns']} | {st['answered']} | {st['heard_p50']} | {st['heard_p95']} | "
                f"{st['end_of_turn_p50']} | {st['end_of_turn_p95']} | {st.get('ended_after_1s')} | "
                f"{st['ended_by_max_delay']} | "
                f"{st['llm_ttft_p50']} | {st['mouth_p50']} | {ms(st.get('lip_p50'))} | "
                f"{ms(st.get('lip_p95'))} | {st.get('lip_sound_first_over_40ms', '')} |")

    lines.append(row("**all**", s["complete"]))
    for g, st in s["by_group"].items():
        lines.append(row(f"group: {g}", st))
    for sp, st in s["by_split"].items():
        lines.append(row(f"split: {sp}", st))
    for v, st in s["by_voice"].items():
        lines.append(row(f"voice: {v}", st))
    lines += ["", f"Hesitations: {s['hesitation_cuts']} of {s['hesitations']} cut "
              f"({s['hesitation_cut_rate']:.0%})." if s["hesitation_cut_rate"] is not None else "", ""]
    lines += ["| Voice | hesitations | cut |", "|---|---|---|"]
    for c in out["hesitation_calls"]:
        lines.append(f"| {c['voice']} | {c['utterances']} | {c['cuts']} |")
    lines.append("")
    o = s.get("spoken_over")
    if o and (o["interruptions"] or o["backchannels"]):
        lines += [
            "## Speaking over the answer (after the echo guard)", "",
            f"- Interruptions: {o['interruptions_stopped']} of {o['interruptions']} stopped the avatar within "
            f"{STOPPED_WITHIN_S:.1f} s; from the caller's first sound to the avatar's silence at the caller: "
            f"p50 {o['stop_p50']} s, p95 {o['stop_p95']} s.",
            f"- Interruptions whose reply the stored transcript shows cut: "
            f"{o.get('interruptions_that_cut_the_reply', '?')} of {o['interruptions']}.",
            f"- Backchannels: {o.get('backchannels_taken_as_turn', '?')} of {o['backchannels']} taken as a turn "
            f"of the caller's (stored transcript: a user line and a new reply); after "
            f"{o.get('backchannels_went_on', '?')} the reply went on (its sound came back within "
            f"{GAP_WINDOW_S:.0f} s, never went quiet for {STOP_QUIET_S} s, or played to its last word); {o['backchannels_that_stopped_it']} "
            f"left {STOP_QUIET_S} s of quiet within {STOPPED_WITHIN_S:.1f} s (the pause it resumed from counts "
            f"when that long); the longest quiet in the {GAP_WINDOW_S:.0f} s after one, measured whole (the "
            f"pause, or a gap between sentences): p50 {o.get('backchannel_longest_gap_p50')} s, "
            f"p95 {o.get('backchannel_longest_gap_p95')} s.",
            f"- Calls where the answer ended before the caller could speak over it: {o['not_spoken_over']}.",
            f"- Interrupted replies, stored transcript against what the caller heard (Whisper on the received "
            f"sound, which may drop a word at a clip's edge): words stored past the last word heard "
            f"{o.get('words_past')}, heard words missing at the end {o.get('words_missing')}.", "",
            "| Item | voice | said | stop after (s) | longest quiet (s) | sound back after (s) | reply cut "
            "| taken as a turn | stored past heard (words) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in out["spoken_over"]:
            lines.append(f"| {r['id']} | {r['voice']} | {r['said']} | "
                         f"{r['stop_s'] if r['spoke_over'] else 'answer over'} | "
                         f"{r.get('longest_gap_s')} | {r.get('resumed_s')} | {r.get('reply_cut')} | "
                         f"{'; '.join(r.get('user_turns') or []) or 'no'} | "
                         f"{r.get('words_past', '') if r['kind'] == 'interruption' else ''} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
