"""bench.turns.trace: where a turn's time went, read from the worker's own log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bench.turns.trace import gaps, trace


def _line(t: float, message: str) -> str:
    return json.dumps({"timestamp": datetime.fromtimestamp(t, UTC).isoformat(), "message": message})


def test_the_speculations_decode_begins_at_the_first_decode_after_it_was_queued(tmp_path: Path) -> None:
    """Whisper busy with an interim when the caller stops: the speculation's decode begins
    only when that one is done, and the trace shows the wait."""
    t0 = 1_000_000.0
    log = tmp_path / "live.log"
    log.write_text("\n".join([
        _line(t0 - 0.2, "Processing segment at 00:00.000"),  # the interim, begun in speech
        _line(t0 + 0.30, "speculative transcription started"),
        _line(t0 + 0.52, "Processing segment at 00:00.000"),  # the speculation's own
        _line(t0 + 0.90, "speculative transcript ready"),
        _line(t0 + 1.40, "user turn committed"),
    ]) + "\n")
    result = {"turns": [{"id": "c00-0", "voice": "espeak-us", "spoke_end_unix": t0, "heard_s": 2.0}]}
    [row] = trace(result, log)
    assert (row["spec_in"], row["whisper_in"], row["spec_out"], row["committed"]) == (0.3, 0.52, 0.9, 1.4)


def test_the_gaps_in_a_reply_are_put_down_to_the_voice_or_to_the_face(tmp_path: Path) -> None:
    t0 = 1_000_000.0
    log = tmp_path / "live.log"
    played = {"timestamp": datetime.fromtimestamp(t0 + 6.0, UTC).isoformat(),
              "message": "reply played", "frames": 100, "starved_s": 0.24, "late_s": 0.31}
    earlier = dict(played, timestamp=datetime.fromtimestamp(t0 - 3.0, UTC).isoformat(),
                   starved_s=9.0)  # the reply before: not this turn's
    log.write_text(json.dumps(earlier) + "\n" + json.dumps(played) + "\n")
    result = {"turns": [{"id": "c00-0", "voice": "espeak-us", "spoke_end_unix": t0, "heard_s": 2.0,
                         "dropouts": 4, "dropout_s": 0.5, "caption_end_s": -0.2}]}
    [row] = gaps(result, log)
    assert (row["dropouts"], row["caption_end_s"], row["starved_s"], row["late_s"]) == (
        4, -0.2, 0.24, 0.31)
