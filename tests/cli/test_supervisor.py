"""`avatar up`'s supervisor: a stop is bounded and leaves no process, whatever the children do.

Each scenario runs in a child interpreter (a hang there fails the test instead of the suite)
with real processes: a shell that ignores SIGTERM, a grandchild in its group, a supervisor
that is SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.unit


def _run(script: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
        capture_output=True, text=True, timeout=timeout,
    )


def test_a_signal_while_the_output_lock_is_held_does_not_deadlock() -> None:
    """The cause of the hang: the handler logged (taking the output lock) in the main thread,
    which could be holding that lock at that instant."""
    res = _run(
        """
        import io, signal
        from cli.supervisor import Supervisor, install_stop_handlers
        sup = Supervisor(out=io.StringIO())
        install_stop_handlers(sup)
        with sup._lock:  # the main thread is writing a line when Ctrl-C arrives
            signal.raise_signal(signal.SIGINT)
        assert sup.stopping and sup.stop_signal == signal.SIGINT
        print("handled")
        """,
        timeout=30,
    )
    assert res.returncode == 0 and "handled" in res.stdout, res.stderr


def test_stop_kills_what_ignores_sigterm_and_its_whole_group() -> None:
    res = _run(
        """
        import io, os, time
        import psutil
        from cli.supervisor import ProcSpec, Supervisor
        stubborn = "bash -c \\"trap '' TERM; sleep 600 & trap '' TERM; wait\\""
        sup = Supervisor(out=io.StringIO())
        sup.start([ProcSpec("web", stubborn, dict(os.environ)),
                   ProcSpec("valkey", ["sleep", "600"], dict(os.environ))])
        leader = psutil.Process(sup.procs["web"].pid)
        # The shell runs `bash -c ...` in its place (exec), so the leader is that bash; its
        # backgrounded `sleep` is the member of the group that the leader does not stop.
        deadline = time.monotonic() + 20
        while not any(p.name() == "sleep" for p in leader.children(recursive=True)):
            assert time.monotonic() < deadline, "the grandchild never started"
            time.sleep(0.05)  # polling a deadline loop: the grandchild is being started
        family = [leader, *leader.children(recursive=True),
                  psutil.Process(sup.procs["valkey"].pid)]
        assert len(family) >= 3, [p.cmdline() for p in family]
        sup.stop(app_grace=1.0, service_grace=1.0)
        gone, alive = psutil.wait_procs(family, timeout=5)
        assert not alive, [p.cmdline() for p in alive]
        print("stopped", len(family))
        """,
    )
    assert res.returncode == 0 and "stopped" in res.stdout, res.stdout + res.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_a_sigkilled_supervisor_leaves_no_child() -> None:
    """What `avatar up` leaves if it is killed outright (the test harness's last resort)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(
            """
            import os, sys, threading
            from cli.supervisor import ProcSpec, Supervisor
            sup = Supervisor(out=open(os.devnull, "w"))
            sup.start([ProcSpec("valkey", ["sleep", "600"], dict(os.environ))])
            print(sup.procs["valkey"].pid, flush=True)
            threading.Event().wait()
            """
        )],
        cwd=PROJECT_ROOT, env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)),
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        child = psutil.Process(int(proc.stdout.readline()))
        # setpriv sets the parent-death signal, then execs the service: kill the supervisor
        # after that (on a loaded machine the pid printed can still be setpriv's, unarmed).
        deadline = time.monotonic() + 20
        while child.name() != "sleep":
            assert time.monotonic() < deadline, f"the service never started: {child.cmdline()}"
            threading.Event().wait(0.02)  # polling interval of a deadline loop
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        _gone, alive = psutil.wait_procs([child], timeout=10)
        assert not alive, "the service outlived its supervisor"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
