"""The concurrent-session cap is exact, even for requests that arrive together."""

from __future__ import annotations

import asyncio

import pytest

from live.admission import Admission

pytestmark = pytest.mark.unit


async def test_cap_is_exact_under_concurrent_requests() -> None:
    running: list[str] = []
    adm = Admission(2, lambda: running)
    results = await asyncio.gather(*(adm.try_reserve(f"job{i}") for i in range(5)))
    assert results.count(True) == 2
    assert adm.load() == 0.5  # full, but still offered jobs (declined after a wait)


async def test_reservation_becomes_running_then_frees() -> None:
    running: list[str] = []
    adm = Admission(1, lambda: running)
    assert await adm.try_reserve("a")
    running.append("a")  # launched: now counted as running
    adm.release("a")
    assert not await adm.try_reserve("b")
    running.clear()  # the job ended
    assert await adm.try_reserve("b")


def test_cap_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Admission(0, lambda: [])


async def test_request_at_the_cap_waits_for_a_finishing_session() -> None:
    running = ["old"]
    adm = Admission(1, lambda: running)
    waiter = asyncio.create_task(adm.try_reserve("new", wait=5.0))
    await asyncio.sleep(0)  # let it find the cap full
    assert not waiter.done()
    running.clear()  # the old session's process exits
    assert await asyncio.wait_for(waiter, 2.0)
    assert not await adm.try_reserve("third", wait=0.2)  # still full: declined after the wait
