"""Persists what a session says and measures, as it happens.

Every final utterance, every turn's latency and every usage snapshot is written from a single
writer thread per session, in order, without blocking the event loop. Writes are keyed
(chat item id; session+provider+metric), so a repeated event changes nothing; a worker that
dies mid-session leaves every line already said in the store.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from store.db import session_factory
from store.models import (
    AgentSessionRecord,
    SessionStatus,
    TranscriptLine,
    TurnMetric,
    utcnow,
)
from store.writes import record_usage

logger = logging.getLogger(__name__)

KNOWN_VENDORS = ("assemblyai", "openai", "cartesia", "tavus", "hedra")


def vendor_of(provider: str) -> str:
    """Map a plugin's provider string ("livekit-plugins-openai", "api.openai.com") to ours."""
    p = provider.lower()
    for v in KNOWN_VENDORS:
        if v in p:
            return v
    return "local"


def usage_rows(model_usage: list[Any]) -> dict[tuple[str, str], float]:
    """Flatten LiveKit's AgentSessionUsage into (provider, metric) -> cumulative quantity."""
    out: dict[tuple[str, str], float] = {}

    def add(provider: str, metric: str, q: float) -> None:
        if q:
            key = (vendor_of(provider), metric)
            out[key] = out.get(key, 0.0) + float(q)

    for u in model_usage:
        kind = getattr(u, "type", "")
        prov = getattr(u, "provider", "") or ""
        if kind == "stt_usage":
            add(prov, "stt_audio_seconds", u.audio_duration)
        elif kind == "llm_usage":
            add(prov, "llm_input_tokens", u.input_tokens)
            add(prov, "llm_output_tokens", u.output_tokens)
        elif kind == "tts_usage":
            add(prov, "tts_characters", u.characters_count)
            add(prov, "tts_audio_seconds", u.audio_duration)
    return out


class SessionRecorder:
    """Writes one session's lines, turns, usage and status to the store."""

    def __init__(self, db_url: str, session_id: str) -> None:
        self.session_id = session_id
        self._factory = session_factory(db_url)
        self._q: queue.Queue[Callable[[Session], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{session_id}", daemon=True)
        self._thread.start()
        self._closed = False

    # -- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            for attempt in range(3):
                db = self._factory()
                try:
                    job(db)
                    db.commit()
                    break
                except IntegrityError:
                    db.rollback()  # already written: keyed writes make repeats no-ops
                    break
                except Exception:
                    db.rollback()
                    if attempt == 2:
                        logger.exception("store write failed", extra={"session_id": self.session_id})
                finally:
                    db.close()

    def _submit(self, job: Callable[[Session], None]) -> None:
        if not self._closed:
            self._q.put(job)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything submitted so far is written."""
        done = threading.Event()
        self._q.put(lambda _db: done.set())
        done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._q.put(None)
        self._thread.join(timeout)

    # -- writes --------------------------------------------------------------------------

    def set_status(self, status: SessionStatus, **fields: Any) -> None:
        def job(db: Session) -> None:
            rec = db.get(AgentSessionRecord, self.session_id)
            if rec is None:
                return
            if rec.status in (SessionStatus.ENDED, SessionStatus.FAILED) and status not in (
                SessionStatus.ENDED,
                SessionStatus.FAILED,
            ):
                return  # never reopen a finished session
            rec.status = status
            for k, v in fields.items():
                setattr(rec, k, v)

        self._submit(job)

    def add_line(
        self,
        *,
        item_id: str,
        speaker: str,
        text: str,
        started_at: float | None,
        ended_at: float | None = None,
        interrupted: bool = False,
        language: str | None = None,
    ) -> None:
        if not text.strip():
            return

        def ts(v: float | None) -> datetime | None:
            return datetime.fromtimestamp(v, UTC) if v else None

        def job(db: Session) -> None:
            exists = db.scalar(
                select(TranscriptLine.id).where(
                    TranscriptLine.session_id == self.session_id, TranscriptLine.item_id == item_id
                )
            )
            if exists:
                return
            db.add(
                TranscriptLine(
                    session_id=self.session_id,
                    item_id=item_id,
                    speaker=speaker,
                    text=text.strip(),
                    language=language,
                    interrupted=interrupted,
                    started_at=ts(started_at) or utcnow(),
                    ended_at=ts(ended_at),
                )
            )

        self._submit(job)

    def add_turn(self, *, item_id: str, metrics: dict[str, float | None]) -> None:
        fields = {k: v for k, v in metrics.items() if v is not None}
        if not fields:
            return

        def job(db: Session) -> None:
            row = db.scalar(
                select(TurnMetric).where(
                    TurnMetric.session_id == self.session_id, TurnMetric.item_id == item_id
                )
            )
            if row is None:
                row = TurnMetric(session_id=self.session_id, item_id=item_id)
                db.add(row)
            for k, v in fields.items():
                setattr(row, k, v)

        self._submit(job)

    def set_usage(self, rows: dict[tuple[str, str], float]) -> None:
        """Cumulative snapshot: the largest value wins, so a repeated report never adds up."""

        def job(db: Session) -> None:
            for (provider, metric), qty in rows.items():
                record_usage(db, self.session_id, provider, metric, qty)

        self._submit(job)
