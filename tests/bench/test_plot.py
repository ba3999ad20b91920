"""The per-voice plot of a room run: each voice gets its row, and a turn ended by the max
delay or a backchannel taken as a turn is marked, not averaged away."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from bench.turns.plot import svg

NS = "{http://www.w3.org/2000/svg}"


def _turn(voice: str, group: str, heard: float, eot: float | None = 0.8) -> dict:
    return {"voice": voice, "group": group, "kind": "complete", "heard_s": heard, "end_of_turn_s": eot}


def test_each_voice_has_a_row_and_late_turns_are_ringed() -> None:
    out = {
        "command": "bench", "max_delay": 1.3,
        "turns": [_turn("espeak-us", "synthetic", 1.1), _turn("espeak-us", "synthetic", 2.9, eot=1.3),
                  _turn("alsa-human", "human", 1.0), {**_turn("alsa-human", "human", 0), "heard_s": None}],
        "hesitation_calls": [{"voice": "espeak-us", "utterances": 4, "cuts": 1}],
        "spoken_over": [],
    }
    root = ET.fromstring(svg(out))
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "espeak-us" in texts and "alsa-human" in texts
    assert "1/2 answered" in texts  # the unanswered turn is counted, not dropped
    assert "2/2 answered; 1/4 hesit. cut" in texts
    rings = [c for c in root.iter(f"{NS}circle") if c.get("fill") == "none"]
    assert [r.find(f"{NS}title").text for r in rings] == ["2.900 s"]  # type: ignore[union-attr]


def test_a_backchannel_taken_as_a_turn_is_marked() -> None:
    over = [
        {"voice": "flite-rms", "group": "natural", "kind": "interruption", "spoke_over": True, "stop_s": 0.42},
        {"voice": "flite-rms", "group": "natural", "kind": "backchannel", "spoke_over": True,
         "stop_s": 0.3, "longest_gap_s": 2.1, "user_turns": ["Okay."]},
        {"voice": "flite-rms", "group": "natural", "kind": "backchannel", "spoke_over": True,
         "stop_s": 0.3, "longest_gap_s": 1.0, "user_turns": []},
    ]
    root = ET.fromstring(svg({"command": "bench", "max_delay": 1.3, "turns": [], "spoken_over": over}))
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "1/1 stopped; 1/2 bc. taken" in texts
    rings = [c for c in root.iter(f"{NS}circle") if c.get("fill") == "none"]
    assert len(rings) == 1
