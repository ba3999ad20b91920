"""Fault timings: how fast the API answers with the broker down, how long `avatar up` takes
to stop on Ctrl-C, on an idle or a loaded machine.

    .venv/bin/python -m bench.faults broker-down [--requests 5]
    .venv/bin/python -m bench.faults up-stop [--runs 8] [--load 2]

`up-stop` re-runs itself inside scripts/netns-run (the embedded LiveKit server binds there);
`--load N` keeps N busy-loop processes running meanwhile (killed at the end). Each run starts
`avatar up --only nothing` (Valkey + LiveKit), sends SIGINT the moment the banner's last line
is read, and records the time to exit and any process left. Results are appended to
bench/results/faults.json and bench/results/faults.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def broker_down(requests: int) -> dict[str, Any]:
    from cli.services import free_port
    from config.settings import load_settings
    from store.db import session_scope, upgrade_db
    from web import create_app
    from web.auth import create_api_token
    from web.backend import Backend

    tmp = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    url = f"sqlite:///{tmp / 'bench.db'}"
    upgrade_db(url)
    settings = load_settings(
        db={"url": url}, broker={"url": f"redis://127.0.0.1:{free_port()}/0"},
        livekit={"api_key": "benchkey", "api_secret": "bench-secret-" + "0" * 32},
        var_dir=tmp, _env_file=None,
    )
    client = create_app(settings, backend=Backend()).test_client()
    with session_scope(url) as db:
        headers = {"Authorization": f"Bearer {create_api_token(db, 'bench')}"}
    times, codes = [], []
    for _ in range(requests):
        t = time.monotonic()
        res = client.post("/api/v1/sessions", json={}, headers=headers)
        times.append(time.monotonic() - t)
        codes.append(res.status_code)
    return {"case": "broker-down", "status_codes": codes,
            "seconds": [round(x, 3) for x in times], "max_seconds": round(max(times), 3)}


def _one_stop() -> dict[str, Any]:
    import psutil

    from cli.services import free_port

    tmp = tempfile.mkdtemp(prefix="bench-up-")
    env = dict(os.environ, LIVEKIT__PORT=str(free_port()), LIVEKIT__RTC_TCP_PORT=str(free_port()),
               BROKER__PORT=str(free_port()), WEB__PORT=str(free_port()),
               DATABASE_URL=f"sqlite:///{tmp}/up.db", VAR_DIR=tmp)
    env.pop("LIVEKIT_URL", None)
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up", "--only", "nothing"], env=env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ctrl-C stops everything" in line:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    t = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.communicate(timeout=90)
        seconds: float | None = round(time.monotonic() - t, 2)
    except subprocess.TimeoutExpired:
        seconds = None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _gone, alive = psutil.wait_procs(children, timeout=10)
    left = [p.name() for p in alive]
    for p in alive:
        p.kill()
    return {"seconds": seconds, "left": left}


def up_stop(runs: int, load: int) -> dict[str, Any]:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        results = [_one_stop() for _ in range(runs)]
    finally:
        for b in burners:
            b.kill()
            b.wait()
    done = [r["seconds"] for r in results if r["seconds"] is not None]
    return {"case": "up-stop", "runs": runs, "busy_processes": load, "cpus": os.cpu_count(),
            "seconds": [r["seconds"] for r in results],
            "max_seconds": max(done) if done else None,
            "hung": sum(r["seconds"] is None for r in results),
            "processes_left": sum(len(r["left"]) for r in results)}


def _record(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {**result, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": platform.machine()}
    path = RESULTS / "faults.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    runs.append(result)
    path.write_text(json.dumps(runs, indent=2) + "\n")
    lines = ["# Fault timings", "", "Command: `.venv/bin/python -m bench.faults <case>`", "",
             "| when | label | case | result |", "|---|---|---|---|"]
    for r in runs:
        if r["case"] == "broker-down":
            text = f"codes {r['status_codes']}, slowest {r['max_seconds']} s"
        else:
            text = (f"{r['runs']} runs, {r['busy_processes']} busy processes on {r['cpus']} CPUs: "
                    f"slowest {r['max_seconds']} s, hung {r['hung']}, "
                    f"processes left {r['processes_left']}")
        lines.append(f"| {r['when']} | {r.get('label', '')} | {r['case']} | {text} |")
    (RESULTS / "faults.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="", help="recorded with the result (e.g. the commit)")
    sub = ap.add_subparsers(dest="case", required=True)
    bd = sub.add_parser("broker-down")
    bd.add_argument("--requests", type=int, default=5)
    us = sub.add_parser("up-stop")
    us.add_argument("--runs", type=int, default=8)
    us.add_argument("--load", type=int, default=0)
    args = ap.parse_args()
    if args.case == "broker-down":
        _record({**broker_down(args.requests), "label": args.label})
        return
    if os.environ.get("AVATAR_NETNS") != "1":
        script = ROOT / "scripts" / "netns-run"
        os.execv(str(script), [str(script), sys.executable, "-m", "bench.faults", *sys.argv[1:]])
    _record({**up_stop(args.runs, args.load), "label": args.label})


if __name__ == "__main__":
    main()
