"""What a local fallback's first use costs: loading its model in a fresh job-like process.

    nice -n 15 .venv/bin/python -m bench.fallback_load --runs 5

A hosted provider's local fallback loads when the provider first fails
(``live.providers.lazy``), in a thread, during that turn. Each run starts a fresh Python
process with the worker's imports (``live.providers``, as the forkserver preloads them) and
times ``load_models`` for one slot, exactly what that first use runs (the engine's own
imports included), plus the resident memory it adds. ``avatar``: the local face's portrait
pack, which a hosted face's fallback loads the same way (``live.worker.avatar_factories``).
Prints a Markdown table (median and max over the runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

SLOTS = ("stt", "llm", "tts", "avatar")

_CHILD = r"""
import json, os, sys, time
import psutil
import live.providers  # noqa: F401  (what a job process has imported before a session)
from config.settings import load_settings
from live.providers.local.prewarm import load_models
from live.providers.registry import ProviderContext

kind = sys.argv[1]
settings = load_settings(_env_file=None)
group = getattr(settings, kind).model_copy(update={"provider": "hosted-primary"})
ctx = ProviderContext(settings=settings)
proc = psutil.Process()
rss = proc.memory_info().rss
started = time.perf_counter()
if kind == "avatar":  # the local face's portrait pack (live.worker.avatar_factories)
    from live.providers.local_avatar import load_portrait
    load_portrait(group, ctx)
else:
    load_models(kind, "local", group, ctx)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_mib": (proc.memory_info().rss - rss) / 2**20,
                  "models": sorted(k for k in ctx.shared if not k.startswith("local.vad"))}))
"""


def measure(kind: str) -> dict[str, float | list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind], capture_output=True, text=True, check=True,
        env={"HF_HUB_OFFLINE": "1", **__import__("os").environ},
    )
    result: dict[str, float | list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| slot | model loaded | load s median / max | RSS added MiB median |")
    print("|---|---|---|---|")
    for kind in SLOTS:
        runs = [measure(kind) for _ in range(args.runs)]
        secs = [float(r["seconds"]) for r in runs]  # type: ignore[arg-type]
        rss = [float(r["rss_mib"]) for r in runs]  # type: ignore[arg-type]
        models = ", ".join(runs[0]["models"])  # type: ignore[arg-type]
        print(f"| {kind} | {models} | {statistics.median(secs):.2f} / {max(secs):.2f} "
              f"| {statistics.median(rss):.0f} |", flush=True)


if __name__ == "__main__":
    main()
