"""The one way tests wait: on a condition, with a deadline, failing with what was awaited.

Not a sleep: ``wait_for`` returns as soon as the condition holds. It polls because what it
waits on usually runs in another process (a Celery worker, a LiveKit server, the live
worker) that cannot signal the test; ``wait_event`` awaits an in-process event or future.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "",
    *,
    interval: float = 0.05,
) -> T:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what or check}")
        threading.Event().wait(interval)  # polling interval of a deadline loop, not a sync


async def wait_event(
    cond: asyncio.Event | Awaitable[object], what: str, timeout: float = 20.0
) -> None:
    """Await an event (or a future) from the test's own loop; fail naming ``what``."""
    try:
        await asyncio.wait_for(cond.wait() if isinstance(cond, asyncio.Event) else cond, timeout)
    except TimeoutError:
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
