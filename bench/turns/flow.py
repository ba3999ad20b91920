"""Does the reply's speech run dry? The local LLM writing into the local TTS, played out.

The caller hears the reply as one stream; when the next synthesized piece is not ready as
the last one ends, the avatar falls silent inside its own answer (and a caller may take that
silence as their turn). This feeds the corpus's questions (``bench.turns.texts``: the working
set and the held-out set, reported apart) to the embedded LLM at temperature 0, streams its
text into ``LocalTTS`` as the agent does, and plays the audio out on a simulated clock from
its first frame: a stall is time the player had nothing to play.

Ways of cutting the text run on the same LLM text, alternating per question (``CUTS``):
the first phrase at its first clause of three words or sentence end (before), or sooner, at
a one-word clause ("Sure,") or before a joining word after four words (what ships); phrases
go on until eight words either way. ``--hog N`` keeps N busy processes running, a machine
that is not idle.

    .venv/bin/python -m bench.turns.flow                 # idle machine
    .venv/bin/python -m bench.turns.flow --hog 2 --label busy

Writes bench/results/turns-flow[-LABEL].json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from livekit.agents import llm as lk_llm

from bench.turns.texts import COMPLETE, FINAL_COMPLETE
from config.session import DEFAULT_INSTRUCTIONS
from config.settings import load_settings
from engines.llama import get_llama
from engines.piper import get_piper
from engines.store import process_models
from live.providers.local_llm import LocalLLM
from live.providers.local_tts import LocalTTS

RESULTS = Path(__file__).resolve().parents[1] / "results"
STALL_S = 0.15  # a silence shorter than this reads as a pause between phrases


@dataclass
class Reply:
    question: str
    group: str
    lead: str
    text: str = ""
    first_audio_s: float = 0.0  # from the request to the first audio frame
    audio_s: float = 0.0
    stall_s: float = 0.0  # total time the player waited inside the reply
    longest_stall_s: float = 0.0
    stalls: list[float] = field(default_factory=list)


async def _llm_text(model: LocalLLM, question: str) -> list[tuple[float, str]]:
    """The LLM's pieces with their arrival times (s from the request)."""
    ctx = lk_llm.ChatContext.empty()
    ctx.add_message(role="system", content=DEFAULT_INSTRUCTIONS)
    ctx.add_message(role="user", content=question)
    t0 = time.monotonic()
    out: list[tuple[float, str]] = []
    async with model.chat(chat_ctx=ctx, extra_kwargs={"temperature": 0.0}) as stream:
        async for chunk in stream:
            if chunk.delta and chunk.delta.content:
                out.append((time.monotonic() - t0, chunk.delta.content))
    return out


async def _speak(tts: LocalTTS, pieces: list[tuple[float, str]], reply: Reply) -> None:
    """Replay the LLM's pieces at their times into the TTS; play the audio out."""
    stream = tts.stream()
    t0 = time.monotonic()

    async def feed() -> None:
        for at, text in pieces:
            await asyncio.sleep(max(0.0, at - (time.monotonic() - t0)))  # the LLM's own pace
            stream.push_text(text)
        stream.end_input()

    feeder = asyncio.create_task(feed())
    play_end: float | None = None
    async for ev in stream:
        now = time.monotonic() - t0
        dur = ev.frame.samples_per_channel / ev.frame.sample_rate
        if play_end is None:
            reply.first_audio_s = round(now, 3)
            play_end = now
        elif now > play_end:
            gap = now - play_end
            if gap >= STALL_S:
                reply.stalls.append(round(gap, 3))
            reply.stall_s += gap
            play_end = now
        play_end += dur
        reply.audio_s += dur
    await feeder
    await stream.aclose()
    reply.stall_s = round(reply.stall_s, 3)
    reply.audio_s = round(reply.audio_s, 2)
    reply.longest_stall_s = max(reply.stalls, default=0.0)


def _hog() -> None:  # pragma: no cover - a busy process
    x = 0
    while True:
        x = (x * 31 + 7) % 1_000_003


def _summary(rows: list[Reply]) -> dict[str, Any]:
    if not rows:
        return {}
    first = sorted(r.first_audio_s for r in rows)
    return {
        "replies": len(rows),
        "first_audio_p50_s": round(statistics.median(first), 3),
        "replies_with_a_stall": sum(1 for r in rows if r.stalls),
        "stall_total_s": round(sum(r.stall_s for r in rows if r.stalls), 2),
        "longest_stall_s": max(r.longest_stall_s for r in rows),
    }


CUTS: dict[str, dict[str, int]] = {  # name -> LocalTTS options
    "first clause of 3 words (before)": {"lead_words": 8, "first_clause_words": 3,
                                         "first_join_words": 0},
    "first cut early (default)": {"lead_words": 8},
}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    ctx = process_models(settings)
    model = LocalLLM(engine=get_llama(ctx, settings.llm.model))
    voice = settings.tts.voice if settings.tts.provider == "local" else None
    piper = get_piper(ctx, voice or "joe-us")
    leads = list(CUTS)
    questions = [(q, "working") for q in COMPLETE[: args.limit]]
    questions += [(q, "held-out") for q in FINAL_COMPLETE[: args.limit]]
    await _llm_text(model, "Hello.")  # load the model before timing anything
    rows: list[Reply] = []
    for i, (question, group) in enumerate(questions):
        pieces = await _llm_text(model, question)
        order = leads if i % 2 == 0 else leads[::-1]
        for lead in order:
            reply = Reply(question, group, lead, text="".join(p for _, p in pieces))
            await _speak(LocalTTS(engine=piper, **CUTS[lead]), pieces, reply)
            rows.append(reply)
            print(f"{lead[:12]} {group:8} first {reply.first_audio_s:.2f} s  stalls "
                  f"{reply.stalls}  {question[:50]!r}", flush=True)
    summary = {
        f"{lead} / {group}": _summary([r for r in rows if r.lead == lead and r.group == group])
        for lead in leads for group in ("working", "held-out")
    }
    return {"summary": summary, "replies": [asdict(r) for r in rows]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=100, help="questions per group")
    ap.add_argument("--hog", type=int, default=0, help="busy processes alongside")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hog)]
    for h in hogs:
        h.start()
    try:
        result = asyncio.run(run(args))
    finally:
        for h in hogs:
            h.terminate()
    cmd = ".venv/bin/python -m bench.turns.flow" + (f" --hog {args.hog}" if args.hog else "") + (
        f" --limit {args.limit}" if args.limit != 100 else "") + (
        f" --label {args.label}" if args.label else "")
    result["meta"] = {
        "command": cmd, "machine": f"{platform.machine()}, {multiprocessing.cpu_count()} cores",
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "stall_threshold_s": STALL_S,
    }
    name = "turns-flow" + (f"-{args.label}" if args.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    lines = [f"# Reply speech flow: {cmd}", "",
             f"{result['meta']['machine']}, {result['meta']['when']}; a stall is at least "
             f"{STALL_S} s with nothing to play inside a reply.", "",
             "| cut | group | replies | first audio p50 | replies with a stall | stall total | longest |",
             "|---|---|---|---|---|---|---|"]
    for key, s in result["summary"].items():
        if s:
            cut, group = key.split(" / ")
            lines.append(f"| {cut} | {group} | {s['replies']} | {s['first_audio_p50_s']} s | "
                         f"{s['replies_with_a_stall']} | {s['stall_total_s']} s | "
                         f"{s['longest_stall_s']} s |")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
