"""bench.cpu_share: the roles a recording's CPU is grouped under."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cpu_share import report, turns


def test_report_gives_each_role_its_share_of_a_core(tmp_path: Path) -> None:
    job = "/w/.venv/bin/python -B -c from multiprocessing.forkserver import main"
    rows = [
        [100.0, 7, 7, "python -m bench.turns.call --phases turns", "python", 0.1],
        [110.0, 7, 8, "python -m bench.turns.call --phases turns", "VideoDecoderQue", 3.9],
        [110.0, 42, 42, job, "python", 5.0],
        [110.0, 43, 43, job, "python", 1.0],
        [110.0, 9, 9, "/w/.tools/livekit-server --dev", "livekit-server", 0.5],
    ]
    path = tmp_path / "cpu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = report(path)
    assert "10 s recorded" in text
    whole, saturated = text.split("cores busy per second")
    shares = [line.strip() for line in whole.splitlines() if line.startswith("  ")]
    assert shares == ["0.50  job process 42", "0.40  caller", "0.10  job process 43", "0.05  SFU"]
    # second 10 used 10.4 core-seconds: saturated; second 0 (0.1) was not
    assert "in the 1 seconds" in saturated and "5.00  job process 42" in saturated


def test_turns_counts_only_the_waits_for_a_reply_by_thread(tmp_path: Path) -> None:
    job = "/w/.venv/bin/python -B -c from multiprocessing.forkserver import main"
    rows = [  # half-second samples; the caller waited from 100.0 to 101.0
        [99.5, 42, 42, job, "avatar-render", 0.5],  # before the wait: not counted
        [100.5, 42, 43, job, "whisper-tiny.en", 0.4],
        [101.0, 42, 44, job, "llama-agent", 0.5],
        [101.0, 42, 42, job, "avatar-render", 0.1],
        [103.0, 42, 44, job, "llama-agent", 0.5],  # after: not counted
    ]
    path, result = tmp_path / "cpu.jsonl", tmp_path / "turns.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result.write_text(json.dumps({"turns": [{"spoke_end_unix": 100.0, "heard_s": 1.0}]}))
    text = turns(path, result)
    assert "1 turns, 1.0 s" in text
    roles, threads = text.split("per thread:")
    assert "1.00  job process" in roles
    assert [line.split()[-1] for line in threads.splitlines() if line.startswith("  ")] == [
        "llama-agent", "whisper-tiny.en", "avatar-render"]
