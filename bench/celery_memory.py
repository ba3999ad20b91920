"""Celery worker memory: finished sessions through a real worker, resident memory per batch.

    nice -n 15 .venv/bin/python -m bench.celery_memory                      # 300 sessions
    nice -n 15 .venv/bin/python -m bench.celery_memory --sessions 100 --task summary --label x

The soak (``bench.soak``) showed the Celery worker growing about 0.5 MiB per call; this
isolates it without LiveKit, the live worker or a caller. A real Valkey and a real
``celery -A tasks worker`` (``--pool solo`` as in ``bench.stack``, or ``--pool prefork
--concurrency 2`` as in the Procfile) work through synthetic finished sessions stored in
SQLite the way the live worker leaves them (ENDED, the agent's greeting, a caller line and
an agent reply that differs from session to session, turn metrics, usage snapshots). For
each session the benchmark sends what the live worker sends at session end
(``tasks.maintenance.finalize_session``, or with ``--task`` one stage alone), waits until
its effect is in the store (billed, post-processed, summarised), and samples the worker's
resident memory (its pool processes included) after each batch, with nothing running. It reports the slope (least squares after the warm-up batches) in KiB per session.
Writes ``bench/results/celery-memory[-LABEL].{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from cli.services import free_port, start_valkey, stop_process
from store.db import session_scope, upgrade_db
from store.models import (
    AgentSessionRecord,
    SessionStatus,
    Summary,
    TranscriptLine,
    TurnMetric,
    utcnow,
)
from store.writes import record_usage

RESULTS = Path(__file__).resolve().parent / "results"
# What the soak's caller says. The agent's reply differs from call to call (the local LLM
# improvises): here a reply drawn from these words, seeded by the session's number, so the
# summariser sees new text each time as in the soak (a transcript repeated word for word
# hides what the summariser's model keeps per distinct prompt).
GREETING = "Hello! I'm Ava. How can I help you today?"
CALLER = (
    "Hello, what time do you open tomorrow?",
    "Can you tell me something about your bakery?",
    "Thank you, that is all for today.",
)
WORDS = (
    "we open at eight in the morning and close at six bread cakes croissants coffee baked "
    "fresh every day our bakery is in the town centre near the station you can order online "
    "or call us delivery is free on weekdays the owner Maria started it twenty years ago "
    "with her family I am happy to help anything else today sorry I do not know that"
).split()


def agent_reply(n: int) -> str:
    rng = random.Random(n)
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 28))).capitalize() + "."


TASKS = {
    "finalize": "tasks.maintenance.finalize_session",
    "transcript": "tasks.transcripts.post_process_transcript",
    "summary": "tasks.summaries.summarize_session",
    "usage": "tasks.usage.account_usage",
    "ping": "tasks.maintenance.ping",
}


@dataclass
class Point:
    sessions: int
    rss_mib: float  # the worker and its pool processes
    seconds: float


def store_session(db_url: str, n: int, *, same_text: bool = False) -> str:
    """A session as the live worker leaves it at the end of a one-sentence call."""
    now = utcnow()
    with session_scope(db_url) as db:
        rec = AgentSessionRecord(
            room=f"mem-{uuid.uuid4().hex[:10]}", status=SessionStatus.ENDED, source="cli",
            provisioned_at=now - timedelta(seconds=22), started_at=now - timedelta(seconds=20),
            ended_at=now, end_reason="caller_left",
        )
        db.add(rec)
        db.flush()
        if same_text:
            n = 0
        said = (("agent", GREETING), ("user", CALLER[n % 3]), ("agent", agent_reply(n)))
        for i, (speaker, text) in enumerate(said):
            db.add(TranscriptLine(
                session_id=rec.id, item_id=f"item{i}", speaker=speaker, text=text,
                started_at=now - timedelta(seconds=18 - 6 * i),
                ended_at=now - timedelta(seconds=15 - 6 * i),
            ))
        for item in ("item0", "item2"):
            db.add(TurnMetric(session_id=rec.id, item_id=item, end_of_utterance_delay=0.5,
                              transcription_delay=0.2, llm_ttft=0.4, tts_ttfb=0.3,
                              avatar_first_frame=0.1))
        for metric, quantity in (("stt_audio_seconds", 3.0), ("llm_input_tokens", 120.0),
                                 ("llm_output_tokens", 30.0), ("tts_characters", 110.0),
                                 ("avatar_seconds", 8.0)):
            record_usage(db, rec.id, "local", metric, quantity)
        return rec.id


def done(db_url: str, session_id: str, task: str) -> bool:
    with session_scope(db_url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        assert rec is not None
        summarised = db.get(Summary, session_id) is not None
        return {
            "finalize": rec.billed_at is not None and summarised,
            "transcript": rec.postprocessed_at is not None,
            "summary": summarised,
            "usage": rec.billed_at is not None,
        }[task]


def rss_mib(pid: int) -> float:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def wait_log(path: Path, needle: bytes, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in path.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"worker did not start; see {path}")
        time.sleep(0.2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from celery import Celery

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"celery-memory-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    db_url = f"sqlite:///{work / 'bench.db'}"
    upgrade_db(db_url)
    port = free_port()
    valkey = start_valkey(port, work / "valkey")
    broker = f"redis://127.0.0.1:{port}/0"
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=broker, VAR_DIR=str(work),
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    cmd = [sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", "live,batch",
           "--pool", args.pool, "--loglevel", "INFO", "-n", f"mem-{os.getpid()}@%h"]
    if args.pool == "prefork":
        cmd += ["--concurrency", str(args.concurrency), "--prefetch-multiplier", "1"]
    log_path = work / "celery.log"
    log = open(log_path, "wb")
    worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    # What the live worker sends with (live/backoffice.py): a bare app, send_task by name.
    sender = Celery("bench-sender", broker=broker, set_as_current=False)
    sender.conf.update(task_serializer="json", accept_content=["json"])
    points: list[Point] = []
    t0 = time.monotonic()
    try:
        wait_log(log_path, b"ready.", worker, 120)
        points.append(Point(0, rss_mib(worker.pid), 0.0))
        for n in range(1, args.sessions + 1):
            session_id = store_session(db_url, n, same_text=args.same_text)
            if args.task == "ping":
                result = Celery("bench-ping", broker=broker, backend=broker,
                                set_as_current=False).send_task(TASKS["ping"], queue="batch")
                result.get(timeout=60)
            else:
                sender.send_task(TASKS[args.task], args=(session_id,), queue="batch")
                deadline = time.monotonic() + 300
                while not done(db_url, session_id, args.task):
                    if worker.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"session {n} not finalised; see {log_path}")
                    time.sleep(0.05)
            if n % args.batch == 0:
                if args.task == "finalize":
                    time.sleep(0.5)  # the chain's last message is acknowledged after its effect
                points.append(Point(n, rss_mib(worker.pid), time.monotonic() - t0))
                print(f"{n:5d} sessions  worker RSS {points[-1].rss_mib:7.1f} MiB", flush=True)
    finally:
        stop_process(worker, timeout=20)
        log.close()
        stop_process(valkey)
    fit = [p for p in points if p.sessions >= args.warmup]
    slope = float(np.polyfit([p.sessions for p in fit], [p.rss_mib for p in fit], 1)[0]) if len(fit) >= 3 else None
    return {
        "command": "nice -n 15 .venv/bin/python -m bench.celery_memory " + " ".join(sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "task": args.task,
        "pool": args.pool if args.pool != "prefork" else f"prefork x{args.concurrency}",
        "env": args.env,
        "same_text": args.same_text,
        "sessions": args.sessions,
        "warmup": args.warmup,
        "rss_start_mib": round(points[0].rss_mib, 1),
        "rss_after_warmup_mib": round(fit[0].rss_mib, 1) if fit else None,
        "rss_end_mib": round(points[-1].rss_mib, 1),
        "slope_kib_per_session": round(slope * 1024, 1) if slope is not None else None,
        "seconds": round(time.monotonic() - t0, 1),
        "points": [asdict(p) for p in points],
    }


def markdown(r: dict[str, Any]) -> str:
    rows = "\n".join(f"| {p['sessions']} | {p['rss_mib']:.1f} | {p['seconds']:.0f} |" for p in r["points"])
    env = ", ".join(r["env"]) or "none"
    return (
        f"# Celery worker memory\n\nCommand: `{r['command']}`  \n"
        f"When: {r['when']}; {r['machine']}; load average at the end {r['load_average_end']}.\n\n"
        f"- task sent per session: `{TASKS[r['task']]}`; pool: {r['pool']}; extra worker env: {env}; "
        f"transcripts: {'the same every session' if r.get('same_text') else 'a new agent reply every session'}\n"
        f"- sessions: {r['sessions']} in {r['seconds']:.0f} s\n"
        f"- worker RSS (pool processes included): {r['rss_start_mib']} MiB idle, "
        f"{r['rss_after_warmup_mib']} MiB after {r['warmup']} sessions, {r['rss_end_mib']} MiB at the end\n"
        f"- slope after the warm-up: **{r['slope_kib_per_session']} KiB per session** "
        f"(least squares over the batch samples from session {r['warmup']} on)\n\n"
        "| sessions | RSS (MiB) | t (s) |\n|---|---|---|\n" + rows + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--batch", type=int, default=10, help="sample every this many sessions")
    parser.add_argument("--warmup", type=int, default=20, help="sessions left out of the slope")
    parser.add_argument("--task", choices=sorted(TASKS), default="finalize")
    parser.add_argument("--pool", choices=("solo", "prefork"), default="solo")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the worker")
    parser.add_argument("--same-text", action="store_true",
                        help="the same transcript every session (the growth needs new text)")
    parser.add_argument("--label", default="")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(markdown(result))
    if not args.no_write:
        name = "celery-memory" + (f"-{args.label}" if args.label else "")
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
