"""The back office under load: 100 launches through the API in one minute, batch work alongside.

    scripts/netns-run .venv/bin/python -m bench.backoffice                  # both Celery layouts
    scripts/netns-run .venv/bin/python -m bench.backoffice --layouts split --launches 100

What runs, per Celery layout, on fresh servers: livekit-server, Valkey, SQLite (or
``--db-url``), the web API as the Procfile runs it (gunicorn, 2 workers x 4 threads) and the
Celery workers of the layout:

- ``shared``: one worker on both queues, ``-Q live,batch --concurrency 2`` (prefork), the
  Procfile's ``worker`` before this benchmark;
- ``split``: the Procfile's ``worker`` (``-Q live``, thread pool) and ``batch`` (``-Q batch``,
  prefork x2) processes.

At the start, ``--batch`` finished calls are queued for their end-of-session work
(``tasks.maintenance.finalize_session``: transcript post-processing, the local summariser,
usage and cost), the load a busy hour of calls leaves behind. Meanwhile ``--launches``
sessions are started through ``POST /api/v1/sessions``, evenly spread over ``--window``
seconds, each in a room of its own. No live worker runs: provisioning ends when LiveKit has the
room and the agent dispatch, which is what the caller waits for before the agent can join.

Reported per layout: provisioning time (session created -> dispatched, from the store) p50,
p95, max; API response time; sessions provisioned exactly once (one dispatch per room in
LiveKit, status dispatched); failures; and the batch work done per minute over the run.
Writes ``bench/results/backoffice.{json,md}`` (``--label`` adds a suffix).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.celery_memory import store_session
from cli.services import (
    LiveKitServerConfig,
    free_port,
    port_open,
    start_livekit_server,
    start_valkey,
    stop_process,
)
from store.db import session_scope, upgrade_db
from store.models import AgentSessionRecord, SessionStatus, Summary

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
LAYOUTS: dict[str, list[list[str]]] = {
    "shared": [["-Q", "live,batch", "--concurrency", "2", "--prefetch-multiplier", "1"]],
    "split": [
        ["-Q", "live", "--pool", "threads", "--concurrency", "8", "--prefetch-multiplier", "1"],
        ["-Q", "batch", "--concurrency", "2", "--prefetch-multiplier", "1"],
    ],
}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))], 3)


@dataclass
class Launch:
    index: int
    status: int = 0
    session_id: str | None = None
    room: str = ""
    sent: float = 0.0
    api_seconds: float = 0.0
    error: str | None = None


@dataclass
class LayoutResult:
    layout: str
    launches: list[Launch] = field(default_factory=list)
    provision_seconds: list[float] = field(default_factory=list)
    dispatched: int = 0
    dispatches_per_room: dict[str, int] = field(default_factory=dict)
    provisioned_dispatches: dict[str, set[str]] = field(default_factory=dict)
    stored_dispatch: dict[str, str | None] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    batch_total: int = 0
    batch_done_in_window: int = 0
    batch_done_at_end: int = 0
    run_seconds: float = 0.0


def post_session(base: str, token: str, i: int, room: str) -> Launch:
    out = Launch(index=i, room=room, sent=time.monotonic())
    body = json.dumps({"room": room}).encode()
    req = urllib.request.Request(
        f"{base}/api/v1/sessions", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                 "Idempotency-Key": f"bench-{room}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            out.status = resp.status
            out.session_id = json.loads(resp.read())["session"]["id"]
    except urllib.error.HTTPError as err:
        out.status = err.code
        out.error = err.read()[:200].decode(errors="replace")
    except OSError as err:
        out.error = f"{type(err).__name__}: {err}"
    out.api_seconds = time.monotonic() - out.sent
    return out


async def dispatch_counts(url: str, key: str, secret: str, rooms: list[str]) -> dict[str, int]:
    from livekit import api

    async with api.LiveKitAPI(url, key, secret) as lk:
        counts = {}
        # a room nobody joined closes after LiveKit's empty timeout: those are not asked about
        # (LiveKit answers 503 after 3 s for each)
        open_rooms = {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
        for room in rooms:
            if room not in open_rooms:
                continue
            try:
                counts[room] = len(await lk.agent_dispatch.list_dispatch(room_name=room))
            except api.TwirpError:  # no such room: the launch never reached LiveKit
                counts[room] = 0
        return counts


PROVISIONED = re.compile(
    r"provision_session\[[^\]]+\] succeeded in [0-9.]+s: .*'session_id': '(\w+)'.*"
    r"'dispatch_id': '([\w-]+)'"
)


def provisioning_dispatches(logs: list[Path]) -> dict[str, set[str]]:
    """Per session, the dispatch ids its provisioning tasks returned (the workers' logs)."""
    out: dict[str, set[str]] = {}
    for path in logs:
        for m in PROVISIONED.finditer(path.read_text(errors="replace")):
            out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def batch_done(db_url: str, ids: list[str]) -> int:
    with session_scope(db_url) as db:
        return sum(
            1 for sid in ids
            if (rec := db.get(AgentSessionRecord, sid)) is not None
            and rec.billed_at is not None and db.get(Summary, sid) is not None
        )


def wait_until(check: Any, timeout: float, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise SystemExit(f"{what}: {'a process exited' if dead else 'timed out'}")
        time.sleep(0.2)


def run_layout(layout: str, args: argparse.Namespace, work: Path) -> LayoutResult:
    from celery import Celery

    from web.auth import create_api_token

    work.mkdir(parents=True, exist_ok=True)
    db_url = args.db_url or f"sqlite:///{work / 'bench.db'}"
    upgrade_db(db_url)
    web_port = free_port()
    secret = "bench-secret-0123456789abcdef0123456789abcdef"
    cfg = LiveKitServerConfig.on_free_ports(
        api_key="benchkey", api_secret=secret,
        webhook_urls=[f"http://127.0.0.1:{web_port}/webhooks/livekit"],
    )
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    lk = start_livekit_server(cfg, log_path=work / "livekit.log")
    valkey_port = free_port()
    valkey = start_valkey(valkey_port, work / "valkey")
    broker = f"redis://127.0.0.1:{valkey_port}/0"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LIVEKIT", "STT__", "LLM__", "TTS__", "AVATAR__", "LIMITS__"))}
    env.update(
        LIVEKIT_URL=f"ws://127.0.0.1:{cfg.port}", LIVEKIT_API_KEY="benchkey",
        LIVEKIT_API_SECRET=secret, DATABASE_URL=db_url, REDIS_URL=broker, VAR_DIR=str(work),
        HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
        WEB__SECRET_KEY=uuid.uuid4().hex + uuid.uuid4().hex,
        WEB__SESSION_RATE_LIMIT="1000 per minute;100000 per day",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    result = LayoutResult(layout=layout)
    try:
        with session_scope(db_url) as db:
            token = create_api_token(db, "bench-backoffice")
        batch_ids = [store_session(db_url, n) for n in range(args.batch)]
        result.batch_total = len(batch_ids)
        for i, extra in enumerate(LAYOUTS[layout]):
            log_path = work / f"celery-{i}.log"
            log = open(log_path, "wb")
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", "worker", *extra,
                 "--loglevel", "INFO", "-n", f"bench{i}-{os.getpid()}@%h"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT))
            wait_until(lambda p=log_path: b"ready." in p.read_bytes(), 120,  # type: ignore[misc]
                       f"celery worker {i}", procs)
        web_log = open(work / "web.log", "wb")
        logs.append(web_log)
        procs.append(subprocess.Popen(
            ["gunicorn", "web:create_app()", "--bind", f"127.0.0.1:{web_port}", "--workers", "2",
             "--threads", "4", "--timeout", "60"],
            env=env, stdout=web_log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT))
        wait_until(lambda: port_open("127.0.0.1", web_port), 60, "web", procs)
        base = f"http://127.0.0.1:{web_port}"

        sender = Celery("bench-sender", broker=broker, set_as_current=False)
        sender.conf.update(task_serializer="json", accept_content=["json"])
        t0 = time.monotonic()
        for sid in batch_ids:  # what the live worker sends when a call ends
            sender.send_task("tasks.maintenance.finalize_session", args=(sid,), queue="batch")
        step = args.window / max(1, args.launches)
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = []
            for i in range(args.launches):
                delay = t0 + i * step - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                room = f"bo-{layout}-{i:03d}-{uuid.uuid4().hex[:6]}"
                futures.append(pool.submit(post_session, base, token, i, room))
            launches = [f.result() for f in futures]
        window_end = time.monotonic()
        result.batch_done_in_window = batch_done(db_url, batch_ids)
        ids = [x.session_id for x in launches if x.session_id]

        def all_dispatched() -> bool:
            with session_scope(db_url) as db:
                n = sum(1 for sid in ids if (r := db.get(AgentSessionRecord, sid)) is not None
                        and r.status != SessionStatus.PENDING and r.status != SessionStatus.PROVISIONING)
            return n == len(ids)

        try:
            wait_until(all_dispatched, args.settle, "provisioning", procs)
        except SystemExit as err:
            print(f"  {layout}: {err}", flush=True)
        result.run_seconds = round(time.monotonic() - t0, 1)
        result.batch_done_at_end = batch_done(db_url, batch_ids)
        with session_scope(db_url) as db:
            for sid in ids:
                rec = db.get(AgentSessionRecord, sid)
                assert rec is not None
                if rec.status == SessionStatus.DISPATCHED and rec.provisioned_at and rec.created_at:
                    result.dispatched += 1
                    created = rec.created_at.replace(tzinfo=UTC) if rec.created_at.tzinfo is None else rec.created_at
                    done = rec.provisioned_at.replace(tzinfo=UTC) if rec.provisioned_at.tzinfo is None else rec.provisioned_at
                    result.provision_seconds.append((done - created).total_seconds())
                else:
                    result.failed.append(f"{sid}: {rec.status} {rec.error or ''}".strip())
        result.failed += [f"launch {x.index}: HTTP {x.status} {x.error}" for x in launches if not x.session_id]
        result.dispatches_per_room = asyncio.run(dispatch_counts(
            f"http://127.0.0.1:{cfg.port}", "benchkey", secret, [x.room for x in launches]))
        result.provisioned_dispatches = provisioning_dispatches(
            [work / f"celery-{i}.log" for i in range(len(LAYOUTS[layout]))])
        with session_scope(db_url) as db:
            result.stored_dispatch = {
                sid: rec.dispatch_id for sid in ids
                if (rec := db.get(AgentSessionRecord, sid)) is not None}
        result.launches = sorted(launches, key=lambda x: x.index)
        print(f"  {layout}: launched in {window_end - t0:.1f} s, {result.dispatched} dispatched",
              flush=True)
    finally:
        for p in reversed(procs):
            stop_process(p, timeout=20)
        for log in logs:
            log.close()
        stop_process(lk)
        stop_process(valkey)
    return result


def summarize(r: LayoutResult, window: float) -> dict[str, Any]:
    counts = list(r.dispatches_per_room.values())
    once = sum(1 for sid, d in r.stored_dispatch.items()
               if d is not None and r.provisioned_dispatches.get(sid) == {d})
    api = [x.api_seconds for x in r.launches]
    return {
        "layout": r.layout,
        "launched": len(r.launches),
        "accepted": sum(1 for x in r.launches if x.session_id),
        "dispatched": r.dispatched,
        "provisioned_exactly_once": once,
        "provisioned_twice": sum(1 for d in r.provisioned_dispatches.values() if len(d) > 1),
        "rooms_dispatched_again": sum(1 for c in counts if c > 1),
        "rooms_still_open": len(counts),
        "failed": r.failed,
        "provision_p50": pct(r.provision_seconds, 50),
        "provision_p95": pct(r.provision_seconds, 95),
        "provision_max": round(max(r.provision_seconds), 3) if r.provision_seconds else None,
        "api_p50": pct(api, 50),
        "api_p95": pct(api, 95),
        "batch_total": r.batch_total,
        "batch_done_in_window": r.batch_done_in_window,
        "batch_per_minute_in_window": round(r.batch_done_in_window * 60 / window, 1),
        "batch_done_at_end": r.batch_done_at_end,
        "run_seconds": r.run_seconds,
    }


def markdown(out: dict[str, Any]) -> str:
    head = (
        "# Back office under load: launches through the API while batch work runs\n\n"
        f"Command: `{out['command']}` ({out['when']}). Machine: {out['machine']}, load average "
        f"at the start {out['load_average_start']}, at the end {out['load_average_end']}.\n"
        f"{out['launches']} sessions started through `POST /api/v1/sessions`, evenly over "
        f"{out['window']} s; at the same moment {out['batch']} finished calls queued for their "
        "end-of-session work (post-processing, local summary, usage and cost). Provisioning: "
        "session created to agent dispatched in LiveKit (from the store). Exactly once: every "
        "provisioning run of the session (the workers' logs) returned the one dispatch the store "
        "holds. Dispatched again: rooms where LiveKit lists more than one dispatch, because no "
        "worker took the first within the dispatch check's wait (this benchmark runs no live "
        "worker; the check is the product's, tasks/resume.py). Batch per minute: finished calls completely done "
        "(summarised and billed) during the launch window.\n\n"
        "| layout | accepted | dispatched | provisioned exactly once | failed | provisioning p50 | "
        "p95 | max | API p50 | API p95 | batch done in window | batch per minute | all done after |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = "".join(
        f"| {r['layout']} | {r['accepted']}/{r['launched']} | {r['dispatched']} | "
        f"{r['provisioned_exactly_once']} | {len(r['failed'])} | {r['provision_p50']} | "
        f"{r['provision_p95']} | {r['provision_max']} | {r['api_p50']} | {r['api_p95']} | "
        f"{r['batch_done_in_window']}/{r['batch_total']} | {r['batch_per_minute_in_window']} | "
        f"{r['batch_done_at_end']}/{r['batch_total']} in {r['run_seconds']} s |\n"
        for r in out["layouts"]
    )
    notes = "".join(
        f"\nFailures ({r['layout']}): " + "; ".join(r["failed"][:10]) + "\n"
        for r in out["layouts"] if r["failed"]
    )
    return head + rows + notes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", default="shared,split", help="comma-separated: shared, split")
    ap.add_argument("--launches", type=int, default=100)
    ap.add_argument("--window", type=float, default=60.0, help="seconds the launches spread over")
    ap.add_argument("--batch", type=int, default=60, help="finished calls queued at the start")
    ap.add_argument("--settle", type=float, default=120.0,
                    help="seconds after the last launch to wait for provisioning")
    ap.add_argument("--db-url", default=None, help="a database of your own (default: SQLite)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if os.environ.get("AVATAR_NETNS") != "1":
        sys.exit("run inside scripts/netns-run (the servers stay in a private network namespace)")
    start_load = [round(x, 2) for x in os.getloadavg()]
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"backoffice-{os.getpid()}"
    results = []
    for layout in args.layouts.split(","):
        if layout not in LAYOUTS:
            sys.exit(f"unknown layout {layout!r}; choose from: {', '.join(LAYOUTS)}")
        print(f"layout {layout} ...", flush=True)
        results.append(summarize(run_layout(layout, args, root / layout), args.window))
    out = {
        "command": "scripts/netns-run .venv/bin/python -m bench.backoffice " + " ".join(sys.argv[1:]),
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_start": start_load,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "launches": args.launches, "window": args.window, "batch": args.batch,
        "layouts": results,
    }
    name = "backoffice" + (f"-{args.label}" if args.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(out))
    print(markdown(out))


if __name__ == "__main__":
    main()
