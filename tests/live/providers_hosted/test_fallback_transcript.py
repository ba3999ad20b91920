"""The stored transcript of a reply the local voice finished holds the whole reply, once.

When the hosted TTS (Cartesia's wire-protocol fake on 127.0.0.1) breaks off after its first
audio, ``TTSFallback`` has Piper (the real local voice, loaded on first use) say the rest of
the same answer, from the sentence that was cut. The session builds its captions and its
assistant message from the voices' word timings (``use_tts_aligned_transcript``, as the worker
runs it), and the worker's recorder stores that message: the caller heard the whole answer, so
the captions and the stored line hold all of it, each word once, timed by the voice.
"""

from __future__ import annotations

import pytest
from livekit.agents import Agent, AgentSession
from livekit.agents.types import TimedString
from livekit.agents.voice import io
from pydantic import SecretStr
from sqlalchemy import select

import live.providers  # noqa: F401  (registers the local providers too)
from config.session import SessionSpec
from fakes.cartesia_server import CartesiaFake
from fakes.openai_server import OpenAIFake
from live.pipeline import build_components, load_fallbacks
from live.providers.local.turn_models import get_vad
from live.providers.registry import ProviderContext
from live.recorder import SessionRecorder
from live.worker import _attach_recorder
from store.db import session_scope
from store.models import AgentSessionRecord, SessionStatus, TranscriptLine
from tests.live.providers_hosted.test_lazy_fallbacks import hosted
from tests.live.providers_hosted.test_midturn_faults import SPOKEN, CaptureAudio, run_turn

pytestmark = pytest.mark.integration


@pytest.fixture
def session_id(db_url: str) -> str:
    with session_scope(db_url) as db:
        rec = AgentSessionRecord(room="r", status=SessionStatus.ACTIVE)
        db.add(rec)
        db.flush()
        return rec.id


class CaptureText(io.TextOutput):
    """The captions the caller is shown, as the session hands them out."""

    def __init__(self) -> None:
        super().__init__(label="captions", next_in_chain=None)
        self.deltas: list[str] = []

    async def capture_text(self, text: str) -> None:
        self.deltas.append(text)

    def flush(self) -> None:
        pass


def stored_lines(db_url: str, session_id: str) -> list[tuple[str, str, bool]]:
    with session_scope(db_url) as db:
        rows = db.scalars(
            select(TranscriptLine)
            .where(TranscriptLine.session_id == session_id)
            .order_by(TranscriptLine.id)
        ).all()
        return [(r.speaker, r.text, r.interrupted) for r in rows]


@pytest.mark.parametrize("vendor_timestamps", ["after_audio", "as_spoken"])
async def test_a_reply_the_local_voice_finished_is_stored_whole(
    vendor_timestamps: str,
    openai_fake: OpenAIFake,
    cartesia_fake: CartesiaFake,
    http_ctx: None,
    db_url: str,
    session_id: str,
) -> None:
    openai_fake.reply = lambda _m: SPOKEN
    # 0.6 s of "Sure. We open at nine every morning." and the socket drops; the vendor's word
    # timings come after a request's audio (none of these words), or as each word begins
    # ("Sure. We", and Piper says "We" again)
    cartesia_fake.close_after_chunks = 6
    cartesia_fake.fail_sockets = 1
    cartesia_fake.timestamps_as_spoken = vendor_timestamps == "as_spoken"
    settings = hosted(
        llm={"base_url": openai_fake.base_url, "api_key": SecretStr(openai_fake.api_key)},
        tts={"base_url": cartesia_fake.base_url, "api_key": SecretStr(cartesia_fake.api_key)},
    )
    ctx = ProviderContext(settings=settings)
    comps = await load_fallbacks(build_components(settings, SessionSpec(), ctx, get_vad(ctx)))
    recorder = SessionRecorder(db_url, session_id)
    sink = CaptureAudio()
    captions = CaptureText()
    try:
        async with AgentSession(
            llm=comps.llm, tts=comps.tts, use_tts_aligned_transcript=True
        ) as session:
            session.output.audio = sink
            session.output.transcription = captions
            _attach_recorder(session, recorder, SessionSpec())
            await session.start(Agent(instructions="Be brief."))
            await run_turn(session, "when do you open")
            # the vendor's 0.6 s (its socket dropped after them), then Piper's seconds
            assert sum(f.samples_per_channel / f.sample_rate for f in sink.frames) > 2.6
    finally:
        await comps.tts.aclose()
        await comps.llm.aclose()
        recorder.close()  # writes what is waiting
    # captions word by word, timed by the voice that said them, the whole answer once
    assert all(isinstance(d, TimedString) for d in captions.deltas), captions.deltas
    assert "".join(captions.deltas).strip() == SPOKEN
    assert stored_lines(db_url, session_id) == [
        ("user", "when do you open", False),
        ("agent", SPOKEN, False),
    ]
