"""OS names for the threads that run the models.

Every thread of a job process is called "python" by the kernel, native ones included
(llama.cpp's server loop, CTranslate2's workers), so per-thread CPU (``top -H``, ``/proc``,
``bench.cpu_share``) cannot tell Whisper from the LLM or the face. Model threads take the
model's name; a native library's threads inherit the name of the thread that started them, so
engines are built under their name (``named_threads``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_NAME = 15
_PR_GET_NAME = 16
_NAME_MAX = 15  # the kernel keeps 15 bytes and a NUL


@functools.cache
def _libc() -> ctypes.CDLL | None:
    path = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(path or "libc.so.6", use_errno=True)
    except OSError:
        return None


def os_thread_name() -> str | None:
    """The calling thread's kernel name (None where ``prctl`` is missing: not Linux)."""
    libc = _libc()
    if libc is None:
        return None
    buf = ctypes.create_string_buffer(_NAME_MAX + 1)
    if libc.prctl(_PR_GET_NAME, buf, 0, 0, 0) != 0:
        return None
    return buf.value.decode(errors="replace")


def set_os_thread_name(name: str) -> None:
    """Name the calling thread for the kernel (cut to 15 bytes); a no-op off Linux."""
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_NAME, name.encode()[:_NAME_MAX], 0, 0, 0)


@contextmanager
def named_threads(name: str) -> Iterator[None]:
    """Threads a native library starts inside this block are called ``name``."""
    before = os_thread_name()
    set_os_thread_name(name)
    try:
        yield
    finally:
        if before is not None:
            set_os_thread_name(before)
