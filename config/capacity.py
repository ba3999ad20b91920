"""How many sessions one live worker holds on the machine it runs on: the default session cap.

``bench.load`` measured, per provider profile, the largest number of concurrent calls one
live worker on a 2-core machine held: no call failed, every caller saw at least 24 fps, and
each caller heard its replies, at the median, no more than 25% later than a lone caller did
in the same run (the issue's bar for the local models, applied to every profile; the callers
and the vendor fakes ran on the same two cores, so these are lower bounds). Those figures,
per core, are ``MEASURED``; the default cap is that rate times the cores this process may use (its CPU
affinity and, in a container, the cgroup's CPU quota: the container's share, not the
host's), bounded by the memory available for the sessions' processes, and never below one.
``LIMITS__MAX_CONCURRENT_SESSIONS`` set explicitly always wins.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from config import catalog

Profile = Literal["hosted", "hosted-speech-local-face", "local"]


@dataclass(frozen=True)
class Measured:
    sessions: int  # the largest N that held on the measuring machine
    cores: int  # that machine's cores
    mib_per_session: float  # the live worker's resident memory per session at that N
    source: str  # the results file

    @property
    def per_core(self) -> float:
        return self.sessions / self.cores


MEASURED: dict[Profile, Measured] = {
    # N=2: heard p50 1.22 s against 1.10 s alone (+11%); N=5: 1.96 s (+78%)
    "hosted": Measured(2, 2, 130.0, "bench/results/load-process-hosted.md"),
    # N=2: 1.21 s against 1.03 s alone (+18%); N=5: 3.51 s
    "hosted-speech-local-face": Measured(2, 2, 155.0, "bench/results/load-hosted-speech-local-face.md"),
    # N=2: 1.89 s against 1.11 s alone (+70%; the thread executor, +56%)
    "local": Measured(1, 2, 475.0, "bench/results/load-process-local.md"),
}
# Memory the worker keeps for itself (the main process, its idle job processes).
BASE_MIB = 400.0


def profile_of(stt: str, llm: str, tts: str, avatar: str) -> Profile:
    """The measured profile a worker with these default providers runs."""
    speech_local = not all(catalog.get(slot, name).hosted
                           for slot, name in (("stt", stt), ("llm", llm), ("tts", tts)))
    if speech_local:
        return "local"
    return "hosted-speech-local-face" if avatar == "local" else "hosted"


def usable_cores() -> float:
    """Cores this process may use: affinity, bounded by a cgroup v2/v1 CPU quota."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return min(cores, quota) if quota else cores


def _cgroup_cpu_quota() -> float | None:
    v2 = Path("/sys/fs/cgroup/cpu.max")
    try:
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        p = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
        if q.is_file() and p.is_file():
            quota_us = int(q.read_text())
            return None if quota_us <= 0 else quota_us / int(p.read_text())
    except (OSError, ValueError):
        return None
    return None


def available_mib() -> float | None:
    """Memory available to this process: the cgroup's limit if set, else MemAvailable."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max")
        if limit.is_file() and limit.read_text().strip() != "max":
            used = Path("/sys/fs/cgroup/memory.current")
            cur = int(used.read_text()) if used.is_file() else 0
            return (int(limit.read_text()) - cur) / 2**20
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass(frozen=True)
class Cap:
    sessions: int
    profile: Profile
    why: str


def default_cap(stt: str, llm: str, tts: str, avatar: str, *, cores: float | None = None,
                mib: float | None = None) -> Cap:
    """The cap that held on measurement, scaled to this machine's cores and memory."""
    profile = profile_of(stt, llm, tts, avatar)
    m = MEASURED[profile]
    cores = usable_cores() if cores is None else cores
    by_cpu = math.floor(m.per_core * cores + 1e-9)
    mib = available_mib() if mib is None else mib
    by_memory = math.floor(max(0.0, mib - BASE_MIB) / m.mib_per_session) if mib is not None else None
    sessions = max(1, min(by_cpu, by_memory) if by_memory is not None else by_cpu)
    why = (f"{profile} profile: {m.sessions} sessions held on {m.cores} cores ({m.source}); "
           f"{cores:g} cores here -> {by_cpu}")
    if by_memory is not None:
        why += f", {mib:.0f} MiB available -> {by_memory}"
    return Cap(sessions, profile, why)
