"""Model threads carry the model's name for the kernel, so per-thread CPU says who used it."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from engines.executors import DeadlineExecutor, SerialExecutor
from engines.threads import named_threads, os_thread_name

pytestmark = pytest.mark.unit


def _names() -> set[str]:
    return {p.read_text().strip() for p in Path("/proc/self/task").glob("*/comm")}


def test_threads_started_in_the_block_take_its_name_and_the_caller_keeps_its_own() -> None:
    before = os_thread_name()
    seen: list[str | None] = []
    with named_threads("whisper-tiny.en-and-more"):
        t = threading.Thread(target=lambda: seen.append(os_thread_name()))
        t.start()
        t.join()
    assert seen == ["whisper-tiny.en"]  # the kernel keeps 15 bytes
    assert os_thread_name() == before


async def test_executor_threads_are_named_after_their_model() -> None:
    serial, deadline = SerialExecutor("llama-agent"), DeadlineExecutor("piper-joe-us")
    assert await serial.run(os_thread_name) == "llama-agent"
    assert await deadline.run(os_thread_name) == "piper-joe-us"
    assert {"llama-agent", "piper-joe-us"} <= _names()
