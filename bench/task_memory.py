"""One end-of-session stage in this process, many times: resident memory against Python's heap.

    nice -n 15 .venv/bin/python -m bench.task_memory summary --runs 60 --tracemalloc
    nice -n 15 .venv/bin/python -m bench.task_memory transcript --runs 300
    MALLOC_ARENA_MAX=2 nice -n 15 .venv/bin/python -m bench.task_memory summary --runs 40
    nice -n 15 .venv/bin/python -m bench.task_memory summary --runs 40 --trim

The bisecting half of ``bench.celery_memory``: no broker, no worker, the task's service
function called directly on the same synthetic sessions. When resident memory grows and
``--tracemalloc`` (Python objects) does not, the growth is native (a C library's cache, or
allocator fragmentation, which ``--trim``: ``malloc_trim(0)`` after every run, and
``MALLOC_ARENA_MAX`` tell apart). Prints a line every tenth of the runs; writes nothing.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import psutil

from bench.celery_memory import store_session
from config.settings import load_settings
from store.db import session_scope, upgrade_db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stage", choices=("transcript", "summary", "usage"))
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="runs before the first sample")
    parser.add_argument("--same-text", action="store_true")
    parser.add_argument("--tracemalloc", action="store_true", help="also trace Python objects")
    parser.add_argument("--trim", action="store_true", help="malloc_trim(0) after every run")
    args = parser.parse_args()

    from tasks.summaries import summarize
    from tasks.transcripts import process_session_transcript
    from tasks.usage import account_session

    work = Path(tempfile.mkdtemp(prefix="task-memory-"))
    url = f"sqlite:///{work / 'bench.db'}"
    upgrade_db(url)
    settings = load_settings(db={"url": url}, var_dir=work, _env_file=None)
    libc = ctypes.CDLL("libc.so.6") if args.trim else None

    def run(n: int) -> None:
        session_id = store_session(url, n, same_text=args.same_text)
        if args.stage == "transcript":
            with session_scope(url) as db:
                process_session_transcript(db, session_id)
        elif args.stage == "summary":
            summarize(settings, session_id)
        else:
            with session_scope(url) as db:
                account_session(db, settings, session_id)
        if libc is not None:
            libc.malloc_trim(0)

    proc = psutil.Process()
    for n in range(args.warmup):
        run(n)
    gc.collect()
    if args.tracemalloc:
        tracemalloc.start()
    rss0 = proc.memory_info().rss / 2**20
    t0 = time.monotonic()
    step = max(1, args.runs // 10)
    for i in range(1, args.runs + 1):
        run(args.warmup + i)
        if i % step == 0 or i == args.runs:
            gc.collect()
            rss = proc.memory_info().rss / 2**20
            traced = (f", Python objects +{tracemalloc.get_traced_memory()[0] / 2**20:.2f} MiB"
                      if args.tracemalloc else "")
            print(f"{i:5d} runs  RSS {rss:7.1f} MiB (+{rss - rss0:.1f}){traced}", flush=True)
    print(f"{args.stage}: {args.runs} runs in {time.monotonic() - t0:.0f} s, RSS {rss0:.1f} -> "
          f"{proc.memory_info().rss / 2**20:.1f} MiB; MALLOC_ARENA_MAX="
          f"{os.environ.get('MALLOC_ARENA_MAX', 'unset')}, trim={args.trim}")


if __name__ == "__main__":
    main()
