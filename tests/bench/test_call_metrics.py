"""The room benchmark pairs each spoken utterance with the metrics of the turn it ended."""

from __future__ import annotations

from bench.turns.call import caller_turn_metrics
from store.models import TurnMetric


def test_the_greetings_metrics_do_not_shift_the_callers_turns() -> None:
    """A session stores the greeting's turn first (no end of utterance); counting it paired
    every utterance with the turn before it, so a turn held to the max delay was reported
    against the next utterance and one at the end of a call was never counted."""
    stored = [
        TurnMetric(item_id="greeting", end_of_utterance_delay=None, tts_ttfb=0.25),
        TurnMetric(item_id="first", end_of_utterance_delay=1.30, llm_ttft=0.14),
        TurnMetric(item_id="second", end_of_utterance_delay=0.80, llm_ttft=0.15),
    ]
    turns = caller_turn_metrics(stored)
    assert [m.item_id for m in turns] == ["first", "second"]
    assert turns[0].end_of_utterance_delay == 1.30
