"""A job process's priority: low while its models load, then the worker's own again."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

CHECK = """
import os, threading
started = os.nice(1)  # the worker was started under `nice -n 1` (on top of the test's own)
from live import worker
worker._lower_priority()
loaded = os.nice(0)
t = threading.Thread(target=threading.Event().wait, daemon=True)  # a model thread
t.start()
worker._restore_priority()
print(started, loaded, os.nice(0), os.getpriority(os.PRIO_PROCESS, t.native_id))
"""


def test_session_returns_to_the_workers_niceness_not_above_it() -> None:
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         check=True).stdout.split()
    started, loaded, restored, thread = (int(x) for x in out)
    assert loaded == min(19, started + 10)  # Linux caps niceness at 19
    assert restored == thread == started
