"""Transcript post-processing: clean lines, statistics and exports (JSON, WebVTT, SRT, Markdown).

The functions at the top are pure (no database, no Celery) and deterministic, so running the
task twice writes the same report. `post_process_transcript` only loads rows, calls
:func:`build_report` and upserts the `TranscriptReport`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from celery import shared_task
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.models import (
    AgentSessionRecord,
    TranscriptLine,
    TranscriptReport,
    TurnMetric,
    utcnow,
)
from tasks.base import AvatarTask

logger = logging.getLogger(__name__)

FILLERS = ("um", "umm", "uh", "uhh", "uh-huh", "er", "erm", "ah", "hmm", "mm", "mhm")
_FILLER_RE = re.compile(
    r"(?<![\w'-])(?:" + "|".join(re.escape(f) for f in FILLERS) + r")(?![\w'-])[,.]?\s*",
    re.IGNORECASE,
)
_SENTENCE_START_RE = re.compile(r"(^|[.!?]\s+)([a-z])")
_WORD_RE = re.compile(r"[\w']+")
LATENCY_STAGES = (
    "end_of_utterance_delay",
    "transcription_delay",
    "llm_ttft",
    "tts_ttfb",
    "avatar_first_frame",
    "e2e_latency",
)
SPEAKER_LABELS = {"user": "Caller", "agent": "Agent"}


@dataclass(frozen=True)
class Fragment:
    """One stored transcript line, as the pure functions see it."""

    speaker: str
    text: str
    start: datetime
    end: datetime | None = None
    interrupted: bool = False


@dataclass
class MergedLine:
    speaker: str
    text: str
    start: float  # seconds from the transcript origin
    end: float
    interrupted: bool = False
    fragments: int = 1
    talk_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["start"] = round(self.start, 3)
        out["end"] = round(self.end, 3)
        out["talk_seconds"] = round(self.talk_seconds, 3)
        return out


@dataclass
class Report:
    lines: list[MergedLine]
    stats: dict[str, Any]
    export_json: str
    export_vtt: str
    export_srt: str
    export_markdown: str
    source_line_count: int = 0
    origin: datetime | None = field(default=None)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def normalize_text(text: str, *, strip_fillers: bool = False) -> str:
    """Collapse whitespace, optionally drop fillers, capitalise sentence starts."""
    out = " ".join(text.split())
    if strip_fillers:
        out = _FILLER_RE.sub("", out)
        out = " ".join(out.split())
        out = re.sub(r"\s+([,.!?])", r"\1", out)
        out = re.sub(r"^[,.\s]+", "", out)
    out = _SENTENCE_START_RE.sub(lambda m: m.group(1) + m.group(2).upper(), out)
    out = re.sub(r"\bi\b", "I", out)
    return out


def _fragment_end(frag: Fragment, estimate_wps: float = 2.5) -> datetime:
    if frag.end is not None and _aware(frag.end) >= _aware(frag.start):
        return _aware(frag.end)
    # No end recorded: estimate from the word count (about 150 words a minute).
    from datetime import timedelta

    words = max(1, len(_WORD_RE.findall(frag.text)))
    return _aware(frag.start) + timedelta(seconds=words / estimate_wps)


def merge_fragments(
    fragments: Sequence[Fragment],
    *,
    origin: datetime | None = None,
    max_gap: float = 3.0,
    strip_fillers: bool = False,
) -> list[MergedLine]:
    """Join consecutive fragments of one speaker (gap at most `max_gap` s) into one line."""
    if not fragments:
        return []
    ordered = sorted(fragments, key=lambda f: _aware(f.start))
    t0 = _aware(origin) if origin is not None else _aware(ordered[0].start)
    merged: list[MergedLine] = []
    for frag in ordered:
        text = normalize_text(frag.text, strip_fillers=strip_fillers)
        if not text:
            continue
        start = (_aware(frag.start) - t0).total_seconds()
        end = (_fragment_end(frag) - t0).total_seconds()
        last = merged[-1] if merged else None
        if last is not None and last.speaker == frag.speaker and start - last.end <= max_gap:
            last.text = f"{last.text} {text}"
            last.end = max(last.end, end)
            last.interrupted = last.interrupted or frag.interrupted
            last.fragments += 1
            last.talk_seconds += end - start
        else:
            merged.append(
                MergedLine(
                    speaker=frag.speaker,
                    text=text,
                    start=start,
                    end=end,
                    interrupted=frag.interrupted,
                    talk_seconds=end - start,
                )
            )
    return merged


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("no values")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def latency_stats(turns: Iterable[dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Mean, p50 and p95 (seconds) of each latency stage that has values."""
    columns: dict[str, list[float]] = {stage: [] for stage in LATENCY_STAGES}
    for turn in turns:
        for stage in LATENCY_STAGES:
            value = turn.get(stage)
            if value is not None and math.isfinite(value):
                columns[stage].append(float(value))
    out: dict[str, dict[str, float]] = {}
    for stage, values in columns.items():
        if values:
            out[stage] = {
                "count": len(values),
                "mean": round(sum(values) / len(values), 4),
                "p50": round(percentile(values, 50), 4),
                "p95": round(percentile(values, 95), 4),
            }
    return out


def transcript_stats(
    lines: Sequence[MergedLine], fragments: Sequence[Fragment]
) -> dict[str, Any]:
    """Talk time, words and words per minute per speaker; interruptions."""
    speakers: dict[str, dict[str, float]] = {}
    for line in lines:
        s = speakers.setdefault(line.speaker, {"talk_seconds": 0.0, "words": 0, "turns": 0})
        s["talk_seconds"] += line.talk_seconds
        s["words"] += len(_WORD_RE.findall(line.text))
        s["turns"] += 1
    for s in speakers.values():
        minutes = s["talk_seconds"] / 60.0
        s["wpm"] = round(s["words"] / minutes, 1) if minutes > 0 else 0.0
        s["talk_seconds"] = round(s["talk_seconds"], 3)
    flagged = sum(1 for f in fragments if f.interrupted)
    overlaps = 0
    for prev, cur in itertools.pairwise(lines):
        if cur.speaker != prev.speaker and cur.start < prev.end - 0.05 and not prev.interrupted:
            overlaps += 1
    duration = max((line.end for line in lines), default=0.0)
    return {
        "speakers": speakers,
        "interruptions": flagged + overlaps,
        "interrupted_flags": flagged,
        "overlaps": overlaps,
        "turns": len(lines),
        "duration_seconds": round(duration, 3),
    }


def _ts(seconds: float, sep: str) -> str:
    ms_total = max(0, round(seconds * 1000))
    h, rem = divmod(ms_total, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _label(speaker: str) -> str:
    return SPEAKER_LABELS.get(speaker, speaker.capitalize())


# What people say is text, never markup: each export format gets its own escaping, and line
# breaks become spaces so a line cannot end a cue or start a heading of its own.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]()<>!#|~&])")
_SRT_TAGS = str.maketrans({"<": "\u2039", ">": "\u203a", "{": "(", "}": ")"})


def _one_line(text: str) -> str:
    return " ".join(text.split())


def vtt_text(text: str) -> str:
    """WebVTT cue text: `&`, `<` and `>` as character references (the spec's escapes)."""
    return _one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def srt_text(text: str) -> str:
    """SubRip has no escape; players read `<i>` and `{\\an8}` tags, so those brackets
    become look-alike characters."""
    return _one_line(text).translate(_SRT_TAGS)


def md_text(text: str) -> str:
    """Markdown: punctuation that starts markup or raw HTML is backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", _one_line(text))


def to_webvtt(lines: Sequence[MergedLine]) -> str:
    out = ["WEBVTT", ""]
    for i, line in enumerate(lines, 1):
        out += [
            str(i),
            f"{_ts(line.start, '.')} --> {_ts(max(line.end, line.start + 0.001), '.')}",
            f"<v {vtt_text(_label(line.speaker))}>{vtt_text(line.text)}",
            "",
        ]
    return "\n".join(out)


def to_srt(lines: Sequence[MergedLine]) -> str:
    out: list[str] = []
    for i, line in enumerate(lines, 1):
        out += [
            str(i),
            f"{_ts(line.start, ',')} --> {_ts(max(line.end, line.start + 0.001), ',')}",
            f"{srt_text(_label(line.speaker))}: {srt_text(line.text)}",
            "",
        ]
    return "\n".join(out)


def to_markdown(
    lines: Sequence[MergedLine], stats: dict[str, Any], *, title: str = "Transcript"
) -> str:
    out = [f"# {title}", ""]
    for line in lines:
        mark = " *(interrupted)*" if line.interrupted else ""
        out.append(
            f"**{md_text(_label(line.speaker))}** [{_ts(line.start, '.')[:8]}]: "
            f"{md_text(line.text)}{mark}"
        )
        out.append("")
    out += ["## Statistics", ""]
    for speaker, s in sorted(stats["speakers"].items()):
        out.append(
            f"- {_label(speaker)}: {s['talk_seconds']:.1f} s talking, {int(s['words'])} words, "
            f"{s['wpm']:.0f} wpm, {int(s['turns'])} turns"
        )
    out.append(f"- Interruptions: {stats['interruptions']}")
    for stage, v in stats.get("latency", {}).items():
        out.append(
            f"- Latency {stage}: mean {v['mean'] * 1000:.0f} ms, p50 {v['p50'] * 1000:.0f} ms, "
            f"p95 {v['p95'] * 1000:.0f} ms (n={v['count']})"
        )
    return "\n".join(out) + "\n"


def build_report(
    fragments: Sequence[Fragment],
    turns: Iterable[dict[str, float | None]] = (),
    *,
    origin: datetime | None = None,
    session_id: str | None = None,
    strip_fillers: bool = False,
    max_gap: float = 3.0,
) -> Report:
    """Everything `post_process_transcript` stores, computed from plain data."""
    if origin is None and fragments:
        origin = min(_aware(f.start) for f in fragments)
    elif origin is not None and fragments:
        origin = min(_aware(origin), *(_aware(f.start) for f in fragments))
    lines = merge_fragments(
        fragments, origin=origin, max_gap=max_gap, strip_fillers=strip_fillers
    )
    stats = transcript_stats(lines, fragments)
    stats["latency"] = latency_stats(turns)
    payload = {
        "session_id": session_id,
        "origin": origin.isoformat() if origin else None,
        "lines": [line.as_dict() for line in lines],
        "stats": stats,
    }
    return Report(
        lines=lines,
        stats=stats,
        export_json=json.dumps(payload, sort_keys=True, indent=2, ensure_ascii=False),
        export_vtt=to_webvtt(lines),
        export_srt=to_srt(lines),
        export_markdown=to_markdown(lines, stats),
        source_line_count=len(fragments),
        origin=origin,
    )


# --------------------------------------------------------------------------- database side


def load_fragments(db: Session, session_id: str) -> list[Fragment]:
    rows = db.scalars(
        select(TranscriptLine)
        .where(TranscriptLine.session_id == session_id)
        .order_by(TranscriptLine.started_at, TranscriptLine.id)
    ).all()
    return [
        Fragment(r.speaker, r.text, _aware(r.started_at), r.ended_at and _aware(r.ended_at),
                 bool(r.interrupted))
        for r in rows
    ]


def load_turns(db: Session, session_id: str) -> list[dict[str, float | None]]:
    rows = db.scalars(select(TurnMetric).where(TurnMetric.session_id == session_id)).all()
    return [{stage: getattr(r, stage) for stage in LATENCY_STAGES} for r in rows]


def process_session_transcript(
    db: Session, session_id: str, *, strip_fillers: bool = False
) -> TranscriptReport | None:
    """Build and upsert the report of one session (None if the session does not exist)."""
    record = db.get(AgentSessionRecord, session_id)
    if record is None:
        return None
    fragments = load_fragments(db, session_id)
    built = build_report(
        fragments,
        load_turns(db, session_id),
        origin=record.started_at,
        session_id=session_id,
        strip_fillers=strip_fillers,
    )
    values = {
        "lines": [line.as_dict() for line in built.lines],
        "stats": built.stats,
        "export_json": built.export_json,
        "export_vtt": built.export_vtt,
        "export_srt": built.export_srt,
        "export_markdown": built.export_markdown,
        "source_line_count": built.source_line_count,
    }
    report = db.get(TranscriptReport, session_id)
    if report is None:
        report = TranscriptReport(session_id=session_id, **values)
        db.add(report)
    else:
        for key, value in values.items():
            if getattr(report, key) != value:
                setattr(report, key, value)
    db.execute(
        update(AgentSessionRecord)
        .where(AgentSessionRecord.id == session_id)
        .values(postprocessed_at=func.coalesce(AgentSessionRecord.postprocessed_at, utcnow()))
        .execution_options(synchronize_session=False)
    )
    return report


@shared_task(base=AvatarTask, bind=True, name="tasks.transcripts.post_process_transcript")
def post_process_transcript(self: AvatarTask, session_id: str) -> dict[str, Any]:
    """Merge, clean and export a session's transcript into its `TranscriptReport`.

    Safe to run twice: the report is a pure function of the stored lines and turn metrics
    and is upserted under the session id, so a second run writes the same values.
    """
    with self.db() as db:
        report = process_session_transcript(db, session_id)
        if report is None:
            logger.warning("no such session", extra={"session_id": session_id})
            return {"session_id": session_id, "status": "missing"}
        return {
            "session_id": session_id,
            "status": "done",
            "source_line_count": report.source_line_count,
            "turns": len(report.lines),
        }
