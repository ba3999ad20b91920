"""Transcript post-processing: pure logic, then the task through the real worker."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from config.settings import Settings
from store.db import session_scope
from store.models import TranscriptLine, TranscriptReport, TurnMetric
from tasks.app import AvatarCelery
from tasks.transcripts import (
    Fragment,
    build_report,
    latency_stats,
    merge_fragments,
    normalize_text,
    percentile,
    process_session_transcript,
)
from tests.tasks.conftest import WorkerProcess, wait_for
from tests.tasks.helpers import get_session, new_session

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


FRAGMENTS = [
    Fragment("user", "  hello   there. um can you  help me?", at(0), at(2)),
    Fragment("user", "my router is broken", at(2.5), at(4)),
    Fragment("agent", "sure. i will send a technician", at(5), at(7), interrupted=True),
    Fragment("user", "thanks", at(6.5), at(7.5)),  # overlaps the agent, who was interrupted
    Fragment("agent", "you are welcome", at(8), at(9)),
    Fragment("user", "bye", at(8.5), at(9.5)),  # overlap without a flag
]


@pytest.mark.unit
def test_normalize_text() -> None:
    assert normalize_text("  hello   world.  how are you? i am fine") == (
        "Hello world. How are you? I am fine"
    )
    assert normalize_text("um, so uh I think, er, yes", strip_fillers=True) == "So I think, yes"
    assert normalize_text("umbrella and hummus", strip_fillers=True) == "Umbrella and hummus"


@pytest.mark.unit
def test_merge_consecutive_fragments_of_one_speaker() -> None:
    lines = merge_fragments(FRAGMENTS)
    assert [(m.speaker, m.fragments) for m in lines] == [
        ("user", 2), ("agent", 1), ("user", 1), ("agent", 1), ("user", 1)
    ]
    assert lines[0].text == "Hello there. Um can you help me? My router is broken"
    assert lines[0].start == 0 and lines[0].end == 4
    assert lines[0].talk_seconds == pytest.approx(3.5)  # the 0.5 s gap is not talk
    assert lines[1].interrupted


@pytest.mark.unit
def test_fragments_far_apart_stay_separate() -> None:
    frags = [Fragment("user", "one", at(0), at(1)), Fragment("user", "two", at(10), at(11))]
    assert len(merge_fragments(frags, max_gap=3.0)) == 2


@pytest.mark.unit
def test_percentile_and_latency_stats() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1.0], 95) == 1.0
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)
    stats = latency_stats(
        [{"llm_ttft": 0.2, "e2e_latency": 1.0}, {"llm_ttft": 0.4, "e2e_latency": None}]
    )
    assert stats["llm_ttft"] == {"count": 2, "mean": 0.3, "p50": 0.3, "p95": 0.39}
    assert stats["e2e_latency"]["count"] == 1
    assert "tts_ttfb" not in stats


@pytest.mark.unit
def test_report_stats_and_exports() -> None:
    report = build_report(
        FRAGMENTS, [{"e2e_latency": 1.2}, {"e2e_latency": 0.8}], session_id="s1"
    )
    stats = report.stats
    assert stats["turns"] == 5
    assert stats["speakers"]["user"]["words"] == 13
    assert stats["speakers"]["user"]["talk_seconds"] == pytest.approx(5.5)
    assert stats["speakers"]["user"]["wpm"] == pytest.approx(13 / (5.5 / 60), abs=0.1)
    assert stats["interrupted_flags"] == 1 and stats["overlaps"] == 1
    assert stats["interruptions"] == 2
    assert stats["latency"]["e2e_latency"]["mean"] == 1.0

    assert report.export_vtt.startswith("WEBVTT\n\n1\n00:00:00.000 --> 00:00:04.000\n<v Caller>")
    assert "2\n00:00:05,000 --> 00:00:07,000\nAgent: Sure. I will send a technician" in (
        report.export_srt
    )
    assert "**Caller** [00:00:00]: Hello there." in report.export_markdown
    assert "*(interrupted)*" in report.export_markdown
    data = json.loads(report.export_json)
    assert data["session_id"] == "s1" and len(data["lines"]) == 5
    # Deterministic: the same input gives byte-identical exports.
    again = build_report(list(reversed(FRAGMENTS)), [{"e2e_latency": 1.2}, {"e2e_latency": 0.8}],
                         session_id="s1")
    assert again.export_json == report.export_json and again.export_srt == report.export_srt


@pytest.mark.unit
def test_empty_transcript() -> None:
    report = build_report([])
    assert report.lines == [] and report.stats["turns"] == 0
    assert report.export_vtt == "WEBVTT\n"


def add_lines(settings: Settings, sid: str) -> None:
    with session_scope(settings.db.url) as db:
        for i, f in enumerate(FRAGMENTS):
            db.add(TranscriptLine(session_id=sid, item_id=f"item{i}", speaker=f.speaker,
                                  text=f.text, started_at=f.start, ended_at=f.end,
                                  interrupted=f.interrupted))
        db.add(TurnMetric(session_id=sid, item_id="t1", e2e_latency=1.1, llm_ttft=0.3))


@pytest.mark.unit
def test_process_session_twice_gives_the_same_report(settings: Settings) -> None:
    sid = new_session(settings, started_at=T0)
    add_lines(settings, sid)
    with session_scope(settings.db.url) as db:
        first = process_session_transcript(db, sid)
        assert first is not None
        snapshot = (first.export_json, first.export_vtt, first.stats, first.source_line_count)
    stamped = get_session(settings, sid).postprocessed_at
    with session_scope(settings.db.url) as db:
        second = process_session_transcript(db, sid)
        assert second is not None
        assert (second.export_json, second.export_vtt, second.stats,
                second.source_line_count) == snapshot
        assert db.query(TranscriptReport).count() == 1
    assert get_session(settings, sid).postprocessed_at == stamped
    assert snapshot[3] == len(FRAGMENTS)


@pytest.mark.integration
def test_task_through_worker_is_idempotent(
    sender: AvatarCelery, task_settings: Settings, celery_worker: WorkerProcess
) -> None:
    sid = new_session(task_settings, started_at=T0)
    add_lines(task_settings, sid)
    for _ in range(2):  # a redelivery runs it again
        res = sender.send_task("tasks.transcripts.post_process_transcript", args=(sid,))
        # ignore_result: wait on the database, not on the result backend
        done = f"post_process_transcript[{res.id}] succeeded"

        def succeeded(marker: str = done) -> bool:
            return marker in celery_worker.log_text()

        wait_for(succeeded, timeout=60, what="the task to succeed")
    with session_scope(task_settings.db.url) as db:
        report = db.get(TranscriptReport, sid)
        assert report is not None
        assert report.source_line_count == len(FRAGMENTS)
        assert len(report.lines) == 5
        assert report.stats["latency"]["e2e_latency"]["mean"] == 1.1
