"""Who takes the machine's cores while a benchmark runs: per-process CPU, sampled.

    .venv/bin/python -m bench.cpu_share record var/cpu.jsonl &      # then run a benchmark
    scripts/netns-run .venv/bin/python -m bench.turns.call --phases turns --per-voice 3 \\
        --voices alsa-human,espeak-us --label probe
    kill %1; .venv/bin/python -m bench.cpu_share report var/cpu.jsonl
    .venv/bin/python -m bench.cpu_share turns var/cpu.jsonl bench/results/turns-call-probe.json

A turn's latency on a 2-core machine depends on what else runs at that moment (the face and
its encoder in every job process, the caller, the SFU, a replacement job process loading its
models). ``record`` reads ``/proc`` every half second and writes, per thread that used CPU,
one JSON line ``[unix time, pid, tid, process command, thread name, CPU seconds]``.
``report`` groups them by role (caller, job process, worker, SFU, other) and prints the
share of a core each role took over the whole recording, and in the seconds when the cores
were saturated (when a turn waits on them). ``turns`` takes a ``bench.turns.call`` result
and counts only the windows from each caller's end of speech to the reply heard (the part of
a turn the caller waits through), per role and per thread: model threads carry their model's
name (``engines.threads``), so the job process's share splits into Whisper, the LLM, the
turn scorer, Piper and the face.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

ROLES = (
    ("bench.turns.call", "caller"), ("cli.call", "caller"), ("livekit-server", "SFU"),
    ("live.worker", "worker"), ("multiprocessing", "job process"), ("valkey", "valkey"),
    ("celery", "celery"), ("bench.cpu_share", "this sampler"),
)


SATURATED = 0.9  # a second counts as saturated when the cores were this busy


def _stat_seconds(path: str, hz: int) -> float:
    rest = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / hz  # utime + stime


def record(out: Path, interval: float) -> None:
    hz = os.sysconf("SC_CLK_TCK")
    before: dict[tuple[str, str], float] = {}
    commands: dict[str, str] = {}
    with out.open("w") as f:
        while True:
            now = time.time()
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if pid not in commands:
                        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                        commands[pid] = raw.replace(b"\0", b" ").decode(errors="replace")[:200]
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        used = _stat_seconds(f"/proc/{pid}/task/{tid}/stat", hz)
                        key = (pid, tid)
                        if key in before and used - before[key] > 0.005:
                            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                            f.write(json.dumps([round(now, 2), int(pid), int(tid), commands[pid],
                                                name, round(used - before[key], 3)]) + "\n")
                        before[key] = used
                except OSError:
                    continue  # the process or thread ended meanwhile
            f.flush()
            time.sleep(interval)


def _role(command: str, pid: int) -> str:
    for needle, role in ROLES:
        if needle in command:
            return f"job process {pid}" if role == "job process" else role
    return "other"


def report(path: Path) -> str:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return "no samples"
    span = rows[-1][0] - rows[0][0] or 1.0
    total: Counter[str] = Counter()
    per_second: dict[int, Counter[str]] = defaultdict(Counter)
    for t, pid, _tid, command, _name, used in rows:
        role = _role(command, pid)
        total[role] += used
        per_second[int(t - rows[0][0])][role] += used
    lines = [f"{span:.0f} s recorded, {os.cpu_count()} cores; share of one core, on average:", ""]
    lines += [f"  {used / span:5.2f}  {role}" for role, used in total.most_common()]
    busy = sorted(sum(c.values()) for c in per_second.values())
    lines += ["", f"cores busy per second: p50 {busy[len(busy) // 2]:.2f}, "
              f"p90 {busy[int(len(busy) * 0.9)]:.2f}, max {busy[-1]:.2f}"]
    full = [c for c in per_second.values() if sum(c.values()) >= SATURATED * (os.cpu_count() or 1)]
    if full:
        during: Counter[str] = sum(full, Counter())
        lines += ["", f"in the {len(full)} seconds the cores were {SATURATED:.0%} busy or more, "
                  "share of one core on average:", ""]
        lines += [f"  {used / len(full):5.2f}  {role}" for role, used in during.most_common()
                  if used / len(full) >= 0.01]
    return "\n".join(lines)


def turns(path: Path, result: Path) -> str:
    """Share of a core per role and thread while callers waited for a reply."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    done = json.loads(result.read_text())
    windows = [(t["spoke_end_unix"], t["spoke_end_unix"] + t["heard_s"]) for t in done["turns"]
               if t.get("spoke_end_unix") and t.get("heard_s") is not None]
    span = sum(b - a for a, b in windows)
    if not rows or not span:
        return "no turn windows in the recording"
    steps = sorted({r[0] for r in rows})
    interval = min((b - a for a, b in itertools.pairwise(steps) if b > a), default=0.5)
    per: Counter[tuple[str, str]] = Counter()
    for t, pid, _tid, command, name, used in rows:
        for a, b in windows:  # a sample at t covers the interval before it
            overlap = min(t, b) - max(t - interval, a)
            if overlap > 0:
                role = _role(command, pid)
                per[("job process" if role.startswith("job process") else role, name)] += (
                    used * overlap / interval)
    roles: Counter[str] = Counter()
    for (role, _), used in per.items():
        roles[role] += used
    lines = [f"{len(windows)} turns, {span:.1f} s from the caller's end of speech to the reply "
             "heard; share of one core:", ""]
    lines += [f"  {used / span:5.2f}  {role}" for role, used in roles.most_common()
              if used / span >= 0.01]
    lines += ["", "per thread:", ""]
    lines += [f"  {used / span:5.2f}  {role:12s} {name}" for (role, name), used in per.most_common()
              if used / span >= 0.01]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="sample until stopped")
    rec.add_argument("out", type=Path)
    rec.add_argument("--interval", type=float, default=0.5)
    rep = sub.add_parser("report", help="summarise a recording")
    rep.add_argument("path", type=Path)
    win = sub.add_parser("turns", help="only while callers waited for replies")
    win.add_argument("path", type=Path)
    win.add_argument("result", type=Path, help="a bench.turns.call result (.json)")
    args = parser.parse_args()
    if args.cmd == "record":
        record(args.out, args.interval)
    elif args.cmd == "turns":
        print(turns(args.path, args.result))
    else:
        print(report(args.path))


if __name__ == "__main__":
    main()
