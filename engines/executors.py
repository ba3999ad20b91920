"""Worker threads around a model: inference off the event loop, one call at a time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from engines.threads import set_os_thread_name

T = TypeVar("T")

CPU_THREADS = 2


class SerialExecutor:
    """One worker thread around a model: never blocks the loop, never runs the model twice."""

    def __init__(self, name: str, workers: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name,
                                        initializer=set_os_thread_name, initargs=(name,))

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def submit_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run from synchronous code (prewarm) on the model's own thread."""
        return self._pool.submit(fn, *args).result()


class DeadlineExecutor:
    """One worker thread around a model, running the queued step whose deadline is earliest.

    Streamed speech is produced in steps (a sentence's front pass, then vocoder stretches).
    When sessions share the voice, first-come order lets one session's new sentence run
    while another's queued audio runs out, and the listener hears a gap. Deadlines (when a
    session's queued audio ends) put the step that would otherwise cause a gap first.
    """

    def __init__(self, name: str) -> None:
        self._queue: list[tuple[float, int, Callable[..., Any], tuple[Any, ...], Any, Any]] = []
        self._ready = threading.Condition()
        self._order = itertools.count()
        self._name = name
        threading.Thread(target=self._work, name=name, daemon=True).start()

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float = 0.0) -> T:
        """Run ``fn(*args)`` on the model thread; ``deadline`` is a ``time.perf_counter()``."""
        return await self.submit(fn, *args, deadline=deadline)

    def submit(self, fn: Callable[..., T], *args: Any, deadline: float = 0.0) -> asyncio.Future[T]:
        """Queue at once (from the event loop); cancelling the future drops a waiting step."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._ready:
            heapq.heappush(self._queue, (deadline, next(self._order), fn, args, loop, future))
            self._ready.notify()
        return future

    def submit_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run from synchronous code (prewarm) on the model's own thread."""
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            heapq.heappush(self._queue, (0.0, next(self._order), fn, args, None, done))
            self._ready.notify()
        return done.result()

    def _work(self) -> None:
        set_os_thread_name(self._name)
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                _, _, fn, args, loop, future = heapq.heappop(self._queue)
            if loop is None:  # submit_sync
                try:
                    future.set_result(fn(*args))
                except BaseException as err:  # handed to the caller
                    future.set_exception(err)
                continue
            if future.cancelled():  # the stream was closed while this step waited
                continue
            try:
                result = fn(*args)
            except BaseException as err:  # handed to the awaiting task
                loop.call_soon_threadsafe(_settle, future, None, err)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
