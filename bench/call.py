"""End-to-end latency as a caller measures it, on the embedded default.

Starts a livekit-server and the live worker (the same commands `avatar up` runs), then makes
calls with `avatar call`'s caller and reads the worker's own per-stage metrics from the store.

    scripts/netns-run .venv/bin/python -m bench.call --calls 2 --turns 3
    scripts/netns-run .venv/bin/python -m bench.call --load 2 --name call-loaded

Writes bench/results/call.json and call.md (``--name``). ``--load N`` keeps N busy-looping
processes running during the calls, to see what a loaded machine does to the timings.
Lip sync per turn: the caller cross-correlates the received audio envelope with the mouth
opening in the received frames (``cli.call.lip_offset``); positive = sound before mouth.
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
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cli.call import CallOptions, run_call
from cli.services import (
    LiveKitServerConfig,
    free_port,
    start_livekit_server,
    start_valkey,
    stop_process,
)
from config.settings import load_settings
from store.db import session_scope, upgrade_db
from store.models import TurnMetric

RESULTS = Path(__file__).resolve().parent / "results"
QUESTIONS = [
    "Hello, what is your name?",
    "What can you help me with today?",
    "Tell me something nice about the ocean.",
    "Thank you, that was lovely.",
]
STAGES = ["end_of_utterance_delay", "transcription_delay", "llm_ttft", "tts_ttfb", "e2e_latency"]


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (with few turns, the largest but one or two)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, -(-95 * len(ordered) // 100) - 1))], 3)


def _busy_loops(n: int) -> list[subprocess.Popen[bytes]]:
    """N processes spinning on a core each: a loaded machine, bounded by the bench's life."""
    code = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass"
    return [subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
            for _ in range(n)]


def _wait_ended(db_url: str, session_id: str | None, timeout: float = 60.0) -> None:
    from store.models import AgentSessionRecord

    deadline = time.monotonic() + timeout
    while session_id and time.monotonic() < deadline:
        with session_scope(db_url) as db:
            rec = db.get(AgentSessionRecord, session_id)
            if rec is None or not rec.is_open:
                return
        time.sleep(0.2)


async def _wait_room_empty(settings: Any, room: str, timeout: float = 60.0) -> None:
    from livekit import api

    key = settings.livekit.api_key.get_secret_value()
    secret = settings.livekit.api_secret.get_secret_value()
    deadline = time.monotonic() + timeout
    async with api.LiveKitAPI(settings.livekit.http_url, key, secret) as lk:
        while time.monotonic() < deadline:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest(names=[room]))
            if not rooms.rooms or rooms.rooms[0].num_participants == 0:
                return
            await asyncio.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--name", default="call", help="results file stem (NAME.json, NAME.md)")
    ap.add_argument("--load", type=int, default=0, metavar="N",
                    help="keep N busy-looping processes running during the calls")
    ap.add_argument("--rewrite", action="store_true",
                    help="only rewrite NAME.md from NAME.json (no calls)")
    args = ap.parse_args()
    if args.rewrite:
        write_markdown(json.loads((args.out / f"{args.name}.json").read_text()),
                       args.out / f"{args.name}.md")
        return
    if os.environ.get("AVATAR_NETNS") != "1":
        sys.exit("run inside scripts/netns-run (WebRTC stays in a private network namespace)")

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-call-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{work / 'bench.db'}"
    upgrade_db(db_url)
    secret = "bench-secret-0123456789abcdef0123456789abcdef"
    cfg = LiveKitServerConfig.on_free_ports(api_key="benchkey", api_secret=secret)
    lk = start_livekit_server(cfg, log_path=work / "livekit.log")
    valkey_port = free_port()
    valkey = start_valkey(valkey_port, work / "valkey")
    url = f"ws://127.0.0.1:{cfg.port}"
    env = dict(os.environ, LIVEKIT_URL=url, LIVEKIT_API_KEY="benchkey", LIVEKIT_API_SECRET=secret,
               DATABASE_URL=db_url, VAR_DIR=str(work), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
               LIVE_HEALTH_PORT=str(free_port()), LIMITS__MAX_CONCURRENT_SESSIONS="1",
               LIMITS__CALLER_GRACE_SECONDS="1", REDIS_URL=f"redis://127.0.0.1:{valkey_port}/0")
    log = open(work / "live.log", "wb")
    loaders: list[subprocess.Popen[bytes]] = []
    live = subprocess.Popen([sys.executable, "-m", "live.worker", "start"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"registered worker" not in (work / "live.log").read_bytes():
            if time.monotonic() > deadline or live.poll() is not None:
                sys.exit("live worker did not register; see " + str(work / "live.log"))
            time.sleep(0.2)
        settings = load_settings(livekit={"url": url, "api_key": "benchkey", "api_secret": secret},
                                 db={"url": db_url}, var_dir=work, _env_file=None)
        calls: list[dict[str, Any]] = []
        loaders += _busy_loops(args.load)
        for i in range(args.calls):
            result = asyncio.run(run_call(settings, CallOptions(
                room=f"bench-{i}", utterances=list(QUESTIONS[: args.turns]), out_dir=work / "calls",
                reply_timeout=60,
            )))
            print(result.render(), flush=True)
            calls.append(result.model_dump(mode="json"))
            # cap 1: the next call needs the slot back, i.e. the agent out of the room (LiveKit
            # drops a dispatch that no worker accepts)
            _wait_ended(db_url, result.session_id)
            asyncio.run(_wait_room_empty(settings, f"bench-{i}"))
        with session_scope(db_url) as db:
            turns = db.scalars(select(TurnMetric)).all()
            stage = {s: [getattr(t, s) for t in turns if getattr(t, s) is not None] for s in STAGES}
    finally:
        for p in loaders:
            stop_process(p, timeout=2)
        stop_process(live, timeout=20)
        stop_process(lk)
        stop_process(valkey)
    audio = [t["audio_latency_s"] for c in calls for t in c["turns"] if t["audio_latency_s"] is not None]
    video = [t["video_latency_s"] for c in calls for t in c["turns"] if t["video_latency_s"] is not None]
    lips = [t["lip_offset_s"] for c in calls for t in c["turns"] if t.get("lip_offset_s") is not None]
    load_flag = f" --load {args.load}" if args.load else ""
    name_flag = f" --name {args.name}" if args.name != "call" else ""
    summary: dict[str, Any] = {
        "command": "scripts/netns-run .venv/bin/python -m bench.call "
                   f"--calls {args.calls} --turns {args.turns}{load_flag}{name_flag}",
        "busy_loop_processes": args.load,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "turns": len(audio),
        "caller_audio_latency_s": {"median": _median(audio), "max": max(audio, default=None)},
        "caller_video_latency_s": {"median": _median(video), "max": max(video, default=None)},
        "caller_lip_offset_s": {"p50": _median(lips), "p95": _p95(lips),
                                "min": min(lips, default=None), "max": max(lips, default=None),
                                "turns_measured": len(lips), "per_turn": lips},
        "worker_stage_median_s": {s: _median(v) for s, v in stage.items()},
        "calls": calls,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(summary, indent=2))
    write_markdown(summary, args.out / f"{args.name}.md")


def _net_offsets(calls: list[dict[str, Any]]) -> list[float]:
    """Per turn: the caller's offset plus (its audio jitter buffer less its video one).

    The caller's SDK plays sound and frames each as soon as its own buffer allows, with no
    audio/video sync, so its sound comes late by the difference; adding it back estimates
    what a receiver that syncs the two (or buffers both alike) would see.
    """
    out = []
    for c in calls:
        for t in c["turns"]:
            lip, a, v = (t.get("lip_offset_s"), t.get("audio_jitter_buffer_ms"),
                         t.get("video_jitter_buffer_ms"))
            if lip is not None and a is not None and v is not None:
                out.append(round(lip + (a - v) / 1000.0, 3))
    return out


def write_markdown(summary: dict[str, Any], path: Path) -> None:
    calls = summary["calls"]
    lips = summary["caller_lip_offset_s"]["per_turn"]
    net = _net_offsets(calls)
    n_calls = len(calls)
    load = summary.get("busy_loop_processes", 0)
    md = [
        "# End-to-end call latency (embedded default)",
        "",
        f"Command: `{summary['command']}` ({summary['when']}). Machine: {summary['machine']}, "
        f"load average {tuple(round(x, 2) for x in summary['load_average'])}; shared and noisy.",
        "",
        "| Measure | Median | Max |",
        "|---|---|---|",
        f"| caller: end of own speech -> first reply audio | {summary['caller_audio_latency_s']['median']} s "
        f"| {summary['caller_audio_latency_s']['max']} s |",
        f"| caller: end of own speech -> first open mouth on video | {summary['caller_video_latency_s']['median']} s "
        f"| {summary['caller_video_latency_s']['max']} s |",
    ]
    for s, v in summary["worker_stage_median_s"].items():
        md.append(f"| worker: {s} | {v} s | |")
    lo = summary["caller_lip_offset_s"]
    md += [
        "",
        "Lip sync per turn (mouth minus sound; positive = sound first; target: at most "
        "+0.040 s at p50 and p95). The caller's SDK does not sync sound to frames: its audio "
        "jitter buffer delays the sound by more than its video buffer delays the frames, so "
        "the second row adds that difference back (what a syncing receiver would see):",
        "",
        "| | p50 | p95 | min | max | turns |",
        "|---|---|---|---|---|---|",
        f"| at the caller | {lo['p50']} s | {lo['p95']} s | {lo['min']} s | {lo['max']} s "
        f"| {lo['turns_measured']} |",
        f"| net of the caller's jitter buffers | {_median(net)} s | {_p95(net)} s "
        f"| {min(net, default=None)} s | {max(net, default=None)} s | {len(net)} |",
        "",
        "Per turn at the caller: " + ", ".join(f"{x * 1000:+.0f} ms" for x in lips),
        "",
        "The caller's own jitter buffers over each reply (mean delay, audio / video): "
        + ", ".join(f"{t.get('audio_jitter_buffer_ms')} / {t.get('video_jitter_buffer_ms')} ms"
                    for c in calls for t in c["turns"]),
    ]
    md.append("")
    md.append(f"{summary['turns']} turns over {n_calls} calls"
              + (f", with {load} busy-looping processes." if load else "."))
    path.write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
