"""Persists what a session says and measures, as it happens.

Every final utterance, every turn's latency and every usage snapshot is written from a single
writer thread per session, in order, without blocking the event loop. Writes are keyed
(chat item id; session+provider+metric), so a repeated event changes nothing; a worker that
dies mid-session leaves every line already said in the store.

The database may be away for a while (PostgreSQL restarting, SQLite locked by another
writer): a write that fails on the connection is retried with backoff, and the writes behind
it wait in order, until it succeeds. Memory stays bounded: usage snapshots and the heartbeat
coalesce into one pending write, and past MAX_PENDING waiting lines a new line is refused
with an error in the log (never silently). While the session runs, `checkpoints` writes the
usage so far (avatar seconds included) and a heartbeat every few seconds, so a SIGKILLed
worker loses at most those seconds and reconciliation sees that it is gone.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from config import catalog
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

# Backoff of a write the database refused for a connection reason (locked, unreachable).
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 5.0
# Lines and turns waiting for the store beyond this are refused (logged as errors): hours of
# conversation, a few MB.
MAX_PENDING = 10_000
# How often the usage so far and the heartbeat are written while the session runs
# (tasks.maintenance.HEARTBEAT_STALE is the silence after which the worker counts as gone).
HEARTBEAT_SECONDS = 5.0


def vendor_of(provider: str) -> str:
    """Map a plugin's provider string ("livekit-plugins-openai", "api.openai.com") to ours."""
    return catalog.vendor_of(provider)


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
        self._closed = False
        self._stop = threading.Event()  # wakes a backoff wait when the recorder is closed
        self._lock = threading.Lock()
        self._usage: dict[tuple[str, str], float] = {}
        self._usage_queued = False
        self._heartbeat = False
        self.failed_attempts = 0  # writes the database refused and that were retried
        self.refused = 0  # lines refused because MAX_PENDING were waiting
        self.dropped = 0  # writes given up (a bug in the write, or still unwritten at close)
        self._thread = threading.Thread(target=self._run, name=f"recorder-{session_id}", daemon=True)
        self._thread.start()

    # -- writer thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            self._write(job)

    def _write(self, job: Callable[[Session], None]) -> None:
        """Write one job, retrying while the database is unavailable; the jobs behind it
        wait, so lines land in the order they were said."""
        delay = RETRY_FIRST_SECONDS
        failing_since: float | None = None
        while True:
            db = self._factory()
            try:
                job(db)
                db.commit()
                if failing_since is not None:
                    logger.warning(
                        "store is back: writing the held writes",
                        extra={"session_id": self.session_id, "waiting": self._q.qsize(),
                               "unavailable_seconds": round(time.monotonic() - failing_since, 1)},
                    )
                return
            except IntegrityError:
                db.rollback()  # already written: keyed writes make repeats no-ops
                return
            except DBAPIError as err:
                db.rollback()
                if not _unavailable(err):
                    self._give_up(job)
                    return
                self.failed_attempts += 1
                if failing_since is None:
                    failing_since = time.monotonic()
                    logger.warning(
                        "store unavailable: holding writes in order and retrying",
                        extra={"session_id": self.session_id, "error": type(err.orig).__name__,
                               "waiting": self._q.qsize() + 1},
                    )
            except Exception:
                db.rollback()
                self._give_up(job)
                return
            finally:
                db.close()
            if self._stop.is_set():  # closing: try more often, the close timeout is running
                time.sleep(min(delay, 1.0))  # backoff period, not synchronisation
            else:
                self._stop.wait(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    def _give_up(self, job: Callable[[Session], None]) -> None:
        self.dropped += 1
        logger.exception(
            "store write failed and was dropped",
            extra={"session_id": self.session_id, "job": getattr(job, "__qualname__", "")},
        )

    def _submit(self, job: Callable[[Session], None], *, bounded: bool = True) -> bool:
        if self._closed:
            return False
        if bounded and self._q.qsize() >= MAX_PENDING:
            self.refused += 1
            logger.error(
                "store unavailable for too long: write refused",
                extra={"session_id": self.session_id, "waiting": self._q.qsize(),
                       "refused": self.refused},
            )
            return False
        self._q.put(job)
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Writes waiting for the store (the one being retried included)."""
        return self._q.qsize()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written; False on timeout."""
        done = threading.Event()
        self._q.put(lambda _db: done.set())
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting (retrying for up to `timeout`), then stop the writer."""
        if self._closed:
            return
        self._stop.set()
        written = self.flush(timeout)
        self._closed = True
        if not written:
            lost = self._q.qsize()
            self.dropped += lost
            logger.error(
                "store unavailable at session end: writes not stored",
                extra={"session_id": self.session_id, "lost": lost},
            )
        self._q.put(None)
        self._thread.join(timeout if written else 0.1)

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

    def set_usage(self, rows: dict[tuple[str, str], float], *, heartbeat: bool = False) -> None:
        """Cumulative snapshot: the largest value wins, so a repeated report never adds up.

        Snapshots coalesce: however long the store is away, one usage write waits, carrying
        the largest value of each metric. `heartbeat` also stamps the session as alive.
        """
        with self._lock:
            for key, qty in rows.items():
                self._usage[key] = max(self._usage.get(key, 0.0), float(qty))
            self._heartbeat = self._heartbeat or heartbeat
            if self._usage_queued:
                return
            self._usage_queued = True
        if not self._submit(self._write_usage, bounded=False):
            with self._lock:
                self._usage_queued = False

    def _write_usage(self, db: Session) -> None:
        with self._lock:
            rows = dict(self._usage)
            beat = self._heartbeat
            self._usage_queued = False  # later snapshots queue a write of their own
        for (provider, metric), qty in rows.items():
            record_usage(db, self.session_id, provider, metric, qty)
        if beat:
            db.execute(
                update(AgentSessionRecord)
                .where(AgentSessionRecord.id == self.session_id)
                .values(heartbeat_at=utcnow())
            )


def _unavailable(err: DBAPIError) -> bool:
    """The database could not take the write now (locked, down, connection lost), as opposed
    to a write that is wrong and would fail again."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return err.connection_invalidated or isinstance(err, OperationalError | InterfaceError)


def session_usage(
    session: Any, avatar: tuple[str, float] | None, avatar_lost_at: float | None = None
) -> dict[tuple[str, str], float]:
    """A session's cumulative usage so far: the plugins' counters and the avatar's seconds
    (metered from its start until now, or until it was lost)."""
    rows = usage_rows(session.usage.model_usage) if session is not None else {}
    if avatar is not None and avatar[0] != "none":
        name, started = avatar
        rows[(name, "avatar_seconds")] = round(max(0.0, (avatar_lost_at or time.time()) - started), 3)
    return rows


async def checkpoints(
    recorder: SessionRecorder,
    snapshot: Callable[[], dict[tuple[str, str], float]],
    interval: float = HEARTBEAT_SECONDS,
) -> None:
    """Write the usage so far and a heartbeat every `interval` seconds, until cancelled."""
    while not recorder.closed:
        try:
            recorder.set_usage(snapshot(), heartbeat=True)
        except Exception:
            logger.exception("usage snapshot failed", extra={"session_id": recorder.session_id})
        await asyncio.sleep(interval)  # a period, not synchronisation
