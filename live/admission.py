"""Hard cap on concurrent sessions per worker process pool.

LiveKit's `load_threshold` can accept two jobs inside one load-update window
(livekit/agents#4884), so the cap is counted here, in the worker's main process, where every
job request is answered: running jobs plus jobs accepted but not yet launched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)


class Admission:
    def __init__(self, cap: int, running_ids: Callable[[], Iterable[str]]) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.cap = cap
        self._running_ids = running_ids
        self._pending: set[str] = set()
        self._lock = asyncio.Lock()

    def in_use(self) -> int:
        return len(set(self._running_ids()) | self._pending)

    def load(self) -> float:
        """For LiveKit's load reporting, which only ranks workers here: at most 0.5.

        The server does not offer a job to a worker whose reported load is high (seen with
        livekit-server 1.13: 0.99 was never offered a job, 0.5 was), and a dispatch that no
        worker is offered is dropped. Offered every job, this worker enforces the cap
        itself: it waits for a finishing session's slot, or declines so another worker can
        take the job.
        """
        return 0.5 * min(1.0, self.in_use() / self.cap)

    async def try_reserve(self, job_id: str, wait: float = 0.0) -> bool:
        """Reserve a slot; at the cap, wait up to `wait` s for one to free before declining.

        A session that just ended still holds its slot until its process exits; without the
        wait, a request arriving in that window would be declined although a slot is about
        to free, and with no other worker the dispatch would be lost.
        """
        deadline = time.monotonic() + wait
        while True:
            async with self._lock:
                if job_id in self._pending:
                    return True
                if self.in_use() < self.cap:
                    self._pending.add(job_id)
                    return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)  # slots free when job processes exit: poll the pool

    def release(self, job_id: str) -> None:
        """Drop the reservation once the job runs (it then counts as running) or failed."""
        self._pending.discard(job_id)
