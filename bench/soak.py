"""Soak: local sessions back to back through the real stack, watching for what leaks.

    scripts/netns-run nice -n 15 .venv/bin/python -m bench.soak                 # 30 minutes
    scripts/netns-run nice -n 15 .venv/bin/python -m bench.soak --minutes 4 --label short

The embedded stack (livekit-server, Valkey, SQLite, one live worker with the local models, one
Celery worker) takes calls from the project's caller (``avatar call``, a process per call, so
the caller's own memory never adds up), one after the other, each saying one sentence and
hanging up. Every ``--sample-every`` seconds it records per process (the live worker, its job
processes, Celery, livekit-server, Valkey, the caller of the moment) the resident
memory, open file descriptors and child processes, plus Valkey's connected clients, and once
more after each call, when its session has ended and its room is empty ("between calls"). At
the end it reports the memory slope per process (least squares over the between-calls samples
from the second call on, MiB per hour: a call in progress is not a leak), processes, file
descriptors and database handles left over against the start, rooms still open on the
server, and whether every session was ended, finalised and billed.
Writes ``bench/results/soak[-LABEL].{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.stack import Stack, embedded_stack, require_netns, wait_room_empty, wait_session_ended

RESULTS = Path(__file__).resolve().parent / "results"
SENTENCES = (
    "Hello, what time do you open tomorrow?",
    "Can you tell me something about your bakery?",
    "Thank you, that is all for today.",
)


@dataclass
class Sample:
    t: float  # seconds since the soak started
    calls: int  # calls finished by then
    rss_mib: dict[str, float]
    fds: dict[str, int]
    children: dict[str, int]
    db_handles: dict[str, int]  # open handles on the SQLite file (its "connections")
    valkey_clients: int | None


@dataclass
class Watch:
    """Samples the stack's processes from a thread while calls run in the main one."""

    stack: Stack
    every: float
    t0: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    between: list[Sample] = field(default_factory=list)  # after each call, nothing running
    calls_done: int = 0
    caller: subprocess.Popen[bytes] | None = None  # the call running now
    _stop: threading.Event = field(default_factory=threading.Event)

    def groups(self) -> dict[str, list[psutil.Process]]:
        """Process name -> its processes (job processes apart from the live worker's own)."""
        out: dict[str, list[psutil.Process]] = {"soak": [psutil.Process()]}
        caller = self.caller
        if caller is not None and caller.poll() is None:
            with contextlib.suppress(psutil.Error):
                out["caller"] = [psutil.Process(caller.pid)]
        for name, popen in self.stack.processes.items():
            try:
                main = psutil.Process(popen.pid)
                kids = main.children(recursive=True)
            except psutil.Error:
                continue
            if name == "live":
                out["live"] = [main]
                out["live-jobs"] = kids
            else:
                out[name] = [main, *kids]
        return out

    def sample(self) -> Sample:
        db_path = self.stack.db_url.split("///", 1)[1]
        rss: dict[str, float] = {}
        fds: dict[str, int] = {}
        children: dict[str, int] = {}
        handles: dict[str, int] = {}
        for name, procs in self.groups().items():
            rss[name], fds[name], handles[name] = 0.0, 0, 0
            children[name] = len(procs) - (0 if name == "live-jobs" else 1)
            for p in procs:
                try:
                    rss[name] += p.memory_info().rss / 2**20
                    fds[name] += p.num_fds()
                    handles[name] += sum(1 for f in p.open_files() if f.path == db_path)
                except psutil.Error:
                    continue
            rss[name] = round(rss[name], 1)
        return Sample(round(time.monotonic() - self.t0, 1), self.calls_done, rss, fds, children,
                      handles, self._valkey_clients())

    def _valkey_clients(self) -> int | None:
        import redis

        try:
            client = redis.Redis.from_url(self.stack.settings.broker.effective_url,
                                          socket_timeout=2)
            n = int(client.info("clients")["connected_clients"]) - 1  # not this one
            client.close()
            return n
        except Exception:
            return None

    def run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self._stop.wait(self.every):  # the sampling period, or stop
                return

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="soak-watch", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def slope_mib_per_hour(samples: list[Sample], name: str) -> float | None:
    """Least-squares RSS slope over between-calls samples, the first call (warm-up) left out."""
    pts = [(s.t, s.rss_mib[name]) for s in samples if name in s.rss_mib and s.calls >= 2]
    if len(pts) < 3 or pts[-1][0] - pts[0][0] < 30:
        return None
    t, y = np.array(pts).T
    return round(float(np.polyfit(t, y, 1)[0]) * 3600, 1)


async def open_rooms(stack: Stack, wait: float) -> dict[str, int]:
    """Rooms still on the server (name -> participants), once they had ``wait`` s to close.

    The server closes a room some seconds after its last participant left.
    """
    from livekit import api

    s = stack.settings.livekit
    deadline = time.monotonic() + wait
    async with api.LiveKitAPI(s.http_url, s.api_key.get_secret_value(),
                              s.api_secret.get_secret_value()) as lk:
        while True:
            rooms = await lk.room.list_rooms(api.ListRoomsRequest())
            if not rooms.rooms or time.monotonic() > deadline:
                return {r.name: r.num_participants for r in rooms.rooms}
            await asyncio.sleep(1.0)  # polling the server, with a deadline


def call(stack: Stack, watch: Watch, room: str, text: str) -> dict[str, Any]:
    """One call by ``avatar call`` in a process of its own; its JSON result."""
    lk = stack.settings.livekit
    env = dict(os.environ, LIVEKIT_URL=lk.effective_url,
               LIVEKIT_API_KEY=lk.api_key.get_secret_value(),
               LIVEKIT_API_SECRET=lk.api_secret.get_secret_value(),
               DATABASE_URL=stack.db_url, VAR_DIR=str(stack.work), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "cli.main", "call", "--room", room, "--text", text,
           "--out", str(stack.work / "calls"), "--reply-timeout", "60", "--json"]
    with open(stack.work / "calls.log", "ab") as err:
        watch.caller = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err)
        try:
            out, _ = watch.caller.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            watch.caller.kill()
            out, _ = watch.caller.communicate()
    try:
        result: dict[str, Any] = json.loads(out)
    except ValueError:
        return {"room": room, "session_id": None, "error": "the caller printed no result "
                f"(exit {watch.caller.returncode}); see calls.log", "turns": []}
    return result


def sessions(stack: Stack) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import AgentSessionRecord

    with session_scope(stack.db_url) as db:
        rows = db.scalars(select(AgentSessionRecord).order_by(AgentSessionRecord.created_at))
        return [{"id": r.id, "room": r.room, "status": r.status, "end_reason": r.end_reason,
                 "postprocessed": r.postprocessed_at is not None,
                 "billed": r.billed_at is not None} for r in rows]


def wait_all_billed(stack: Stack, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = sessions(stack)
        if all(r["billed"] for r in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(1.0)  # polling another process's writes, with a deadline


def run(args: argparse.Namespace) -> dict[str, Any]:
    calls: list[dict[str, Any]] = []
    with embedded_stack("bench-soak", celery=True) as stack:
        watch = Watch(stack, args.sample_every)
        watch.samples.append(watch.sample())  # before any call
        idle_jobs = len(watch.groups().get("live-jobs", []))
        thread = watch.start()
        deadline = time.monotonic() + args.minutes * 60
        n = 0
        while time.monotonic() < deadline:
            room = f"soak-{n}"
            started = time.monotonic()
            result = call(stack, watch, room, SENTENCES[n % len(SENTENCES)])
            turns = result.get("turns") or []
            ok = result.get("error") is None and bool(turns) and all(
                t.get("audio_latency_s") is not None for t in turns)
            wait_session_ended(stack.db_url, result.get("session_id"))
            asyncio.run(wait_room_empty(stack.settings, room))
            calls.append({"room": room, "session_id": result.get("session_id"), "ok": ok,
                          "error": result.get("error"),
                          "reply_s": turns[0].get("audio_latency_s") if turns else None,
                          "seconds": round(time.monotonic() - started, 1)})
            n += 1
            watch.calls_done = n
            # the job process of the call just ended exits, a fresh idle one takes its place
            settle = time.monotonic() + 30
            while (len(watch.groups().get("live-jobs", [])) != idle_jobs
                   and time.monotonic() < settle):
                time.sleep(0.5)  # polling the worker's process pool, with a deadline
            watch.between.append(watch.sample())
            print(f"call {n}: {'ok' if ok else 'FAILED ' + str(result.get('error'))} "
                  f"({calls[-1]['seconds']} s)", flush=True)
        rows = wait_all_billed(stack, timeout=120)
        rooms = asyncio.run(open_rooms(stack, wait=60))
        watch.stop()
        thread.join(30)
        watch.samples.append(watch.sample())  # after every session has ended
    first, last = watch.samples[0], watch.samples[-1]
    names = sorted({n for smp in watch.samples for n in smp.rss_mib})
    report = {
        "calls": len(calls),
        "calls_ok": sum(c["ok"] for c in calls),
        "sessions": len(rows),
        "sessions_ended": sum(r["status"] == "ended" for r in rows),
        "sessions_postprocessed": sum(r["postprocessed"] for r in rows),
        "sessions_billed": sum(r["billed"] for r in rows),
        "open_rooms_at_end": rooms,
        "per_process": {
            name: {
                "rss_start_mib": first.rss_mib.get(name),
                "rss_end_mib": last.rss_mib.get(name),
                "rss_max_mib": max(smp.rss_mib.get(name, 0.0) for smp in watch.samples),
                "slope_mib_per_hour": slope_mib_per_hour(watch.between, name),
                "fds_start": first.fds.get(name),
                "fds_end": last.fds.get(name),
                "children_start": first.children.get(name),
                "children_end": last.children.get(name),
                "db_handles_start": first.db_handles.get(name),
                "db_handles_end": last.db_handles.get(name),
            }
            for name in names
        },
        "valkey_clients_start": first.valkey_clients,
        "valkey_clients_end": last.valkey_clients,
    }
    return {"report": report, "calls": calls, "sessions": rows,
            "samples": [s.__dict__ for s in watch.samples],
            "between_calls": [s.__dict__ for s in watch.between]}


def render_md(out: dict[str, Any]) -> str:
    r = out["report"]
    lines = [
        f"# Soak{' (' + out['label'] + ')' if out['label'] else ''}",
        "",
        f"Command: `{out['command']}`  ",
        f"When: {out['when']}; {out['machine']}; load average at the end {out['load_average']}; "
        f"asked for {out['minutes']} min, ran {out['elapsed_min']} min.",
        "",
        *([f"A short run ({out['minutes']:g} min): it checks that the soak works end to end; "
           "judge memory slopes and leaks on the 30-minute run "
           "(`scripts/netns-run nice -n 15 .venv/bin/python -m bench.soak`). A call fails "
           "when no reply comes within 60 s: on a machine whose load average is far above "
           "its cores, the local models answer that slowly.", ""]
          if out["minutes"] < 30 else []),
        f"- calls: {r['calls']} ({r['calls_ok']} ok)",
        f"- sessions stored {r['sessions']}: ended {r['sessions_ended']}, finalised "
        f"(post-processed) {r['sessions_postprocessed']}, billed {r['sessions_billed']}",
        f"- rooms still open on the server at the end (after up to 60 s to close): "
        f"{len(r['open_rooms_at_end'])} {r['open_rooms_at_end'] or ''}",
        f"- Valkey clients: {r['valkey_clients_start']} at the start, "
        f"{r['valkey_clients_end']} at the end",
        "",
        "| process | RSS start | RSS end | RSS max | slope (MiB/h) | fds start/end "
        "| children start/end | DB handles start/end |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, p in r["per_process"].items():
        slope = p["slope_mib_per_hour"]
        lines.append(
            f"| {name} | {p['rss_start_mib']} | {p['rss_end_mib']} | {p['rss_max_mib']:.1f} "
            f"| {'n/a' if slope is None else slope} | {p['fds_start']}/{p['fds_end']} "
            f"| {p['children_start']}/{p['children_end']} "
            f"| {p['db_handles_start']}/{p['db_handles_end']} |")
    lines += [
        "",
        "RSS in MiB, summed over a group's processes (`live-jobs`: the live worker's job "
        "processes, the idle ones waiting for the next call included; `caller`: the "
        "`avatar call` process of the call running at that moment, which loads Piper and "
        "Whisper to speak and to transcribe replies; `soak`: this benchmark). "
        "The slope is a least-squares fit over the between-calls samples from the second "
        "call on; over a short run it mostly shows warm-up (model pages touched, allocator "
        "arenas), not a leak: judge leaks on the 30-minute run; n/a: fewer than three such "
        "samples over 30 s. `caller` has no start or end: it runs only during a call. The "
        "start is sampled before the first call, the end after the last session ended and "
        "was billed.",
        "",
        "Memory between calls (each call's session ended, its room empty, the live worker "
        "back to its idle job processes):",
        "",
        "| t (s) | calls | " + " | ".join(r["per_process"]) + " |",
        "|---|---|" + "---|" * len(r["per_process"]),
    ]
    for s in out["between_calls"]:
        lines.append(f"| {s['t']} | {s['calls']} | "
                     + " | ".join(str(s["rss_mib"].get(n, "")) for n in r["per_process"]) + " |")
    lines += [
        "",
        f"Memory over time (every {out['sample_every']:g} s, calls running or not):",
        "",
        "| t (s) | calls | " + " | ".join(r["per_process"]) + " |",
        "|---|---|" + "---|" * len(r["per_process"]),
    ]
    for s in out["samples"]:
        lines.append(f"| {s['t']} | {s['calls']} | "
                     + " | ".join(str(s["rss_mib"].get(n, "")) for n in r["per_process"]) + " |")
    failed = [c for c in out["calls"] if not c["ok"]]
    if failed:
        lines += ["", "Failed calls:", ""] + [f"- {c['room']}: {c['error']}" for c in failed]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to keep calling")
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--label", default="", help="suffix of the result files")
    args = parser.parse_args()
    require_netns()
    t0 = time.monotonic()
    out = run(args)
    cmd = "scripts/netns-run nice -n 15 .venv/bin/python -m bench.soak"
    if args.minutes != 30.0:
        cmd += f" --minutes {args.minutes:g}"
    if args.sample_every != 10.0:
        cmd += f" --sample-every {args.sample_every:g}"
    if args.label:
        cmd += f" --label {args.label}"
    out.update(command=cmd, label=args.label, minutes=args.minutes,
               sample_every=args.sample_every,
               elapsed_min=round((time.monotonic() - t0) / 60, 1),
               when=datetime.now(UTC).isoformat(timespec="seconds"),
               machine=f"{platform.machine()}, {os.cpu_count()} cores",
               load_average=[round(x, 2) for x in os.getloadavg()])
    stem = "soak" + (f"-{args.label}" if args.label else "")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(out, indent=1) + "\n")
    md = render_md(out)
    (RESULTS / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
