"""End to end: a real livekit-server, the live worker, Celery, and `avatar call` as the caller.

The caller asks two questions and must get two spoken answers with video; the transcript and
metrics must be in the store as they happen, and after the caller leaves the back office
leaves the cleaned transcript, summary and cost with no manual step.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from livekit import api
from sqlalchemy import select

from bench.wer import cut_alignment
from cli.call import STOPPED_WITHIN_S, CallOptions, run_call
from live.providers.turn_lm import SCORE_TIMEOUT
from store.db import session_scope
from store.models import (
    AgentSessionRecord,
    SessionCost,
    Summary,
    TranscriptLine,
    TranscriptReport,
    TurnMetric,
    UsageRecord,
)
from tests.conftest import Stack
from tests.e2e.voices import other_voice_wav
from tests.waiting import wait_for

COMMIT_SLACK_S = 0.1

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _status(stack: Stack, session_id: str) -> str | None:
    with session_scope(stack.db_url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        return rec.status if rec else None


async def test_invalid_metadata_fails_only_that_job(stack: Stack) -> None:
    settings = stack.settings()
    with session_scope(stack.db_url) as db:
        rec = AgentSessionRecord(room="bad-meta", source="api", status="dispatched")
        db.add(rec)
        db.flush()
        sid = rec.id
    async with api.LiveKitAPI(settings.livekit.http_url, stack.livekit.api_key, stack.livekit.api_secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name="bad-meta"))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=settings.livekit.agent_name, room="bad-meta",
            metadata=json.dumps({"session_id": sid, "llm": {"provider": "nope"}}),
        ))
    await asyncio.to_thread(wait_for, lambda: _status(stack, sid) == "failed", 60, "session marked failed")
    with session_scope(stack.db_url) as db:
        err = db.get(AgentSessionRecord, sid).error  # type: ignore[union-attr]
    assert err and "llm.provider" in err
    assert "invalid session metadata" in stack.log_text("live")


async def test_caller_gets_two_spoken_answers_with_video(stack: Stack, artifacts_dir) -> None:  # type: ignore[no-untyped-def]
    settings = stack.settings()
    # the caller does not sound like the agent (the turn-taking was once tuned on its own voice)
    utterances = [
        other_voice_wav("Hello, what is your name?", artifacts_dir / "ask-name.wav", "flite"),
        other_voice_wav("What colour is the sky on a sunny day?", artifacts_dir / "ask-sky.wav", "espeak"),
    ]
    result = await run_call(settings, CallOptions(
        room=None,
        utterances=list(utterances),
        out_dir=artifacts_dir / "call",
        reply_timeout=90,
    ))
    print(result.render())  # the caller's own latency figures, kept in the test log
    assert result.error is None, result.render() + "\n--- live log ---\n" + stack.log_text("live")[-6000:]
    assert result.greeting_heard
    assert len(result.turns) == 2

    def seen(turn: object) -> str:
        """What a failed check shows: the turn, and the worker's log of the call."""
        return f"{turn}\n--- live log ---\n{stack.log_text('live')[-6000:]}"

    for turn in result.turns:
        assert turn.audio_latency_s is not None and turn.audio_latency_s > 0
        assert turn.reply_audio_s > 0.5
        assert turn.video_frames > 10  # video arrived during the answer
        assert turn.video_latency_s is not None  # the mouth moved
        assert len(turn.reply_text.split()) >= 2, seen(turn)  # the answer was intelligible speech
        # captions word by word, in step with the sound the caller hears (which its own
        # jitter buffer holds back by up to a few hundred ms on a loaded machine)
        assert turn.caption_text.strip(), seen(turn)
        assert turn.caption_chunks >= 0.6 * len(turn.caption_text.split()), seen(turn)
        assert turn.caption_start_lag_s is not None and -1.0 < turn.caption_start_lag_s < 0.6, seen(turn)
        assert turn.caption_end_lag_s is not None and -1.5 < turn.caption_end_lag_s < 0.6, seen(turn)
    sid = result.session_id
    assert sid, "the agent publishes its session id as a participant attribute"

    # The caller left: after the grace period the session ends and the back office runs.
    # Only then is the whole transcript stored: the caller stops listening once a reply has
    # been quiet for a while, and a reply stalled longer than that on a busy machine is
    # still being played (and not yet a line) when the call returns.
    await asyncio.to_thread(wait_for, lambda: _status(stack, sid) == "ended", 60, "session ended")
    with session_scope(stack.db_url) as db:
        lines = db.scalars(select(TranscriptLine).where(TranscriptLine.session_id == sid)
                           .order_by(TranscriptLine.started_at)).all()
        speakers = [ln.speaker for ln in lines]
        assert speakers.count("user") >= 2 and speakers.count("agent") >= 3, speakers  # greeting + 2
        # the stored replies read as their captions did
        stored = [" ".join(ln.text.split()) for ln in lines if ln.speaker == "agent"]
        for turn in result.turns:
            assert " ".join(turn.caption_text.split()) in stored, (turn.caption_text, stored)
        # asked its name, the agent gives the persona's (the default persona is Ava)
        asked = next(i for i, ln in enumerate(lines) if ln.speaker == "user" and "name" in ln.text.lower())
        answer = next(ln.text for ln in lines[asked + 1:] if ln.speaker == "agent")
        assert "Ava" in answer, [(ln.speaker, ln.text) for ln in lines]
        turns = db.scalars(select(TurnMetric).where(TurnMetric.session_id == sid)).all()
        assert sum(1 for t in turns if t.e2e_latency is not None) >= 2
        assert any(t.llm_ttft for t in turns) and any(t.tts_ttfb for t in turns)
        # each turn ended on the end-of-turn rule, none only because the max delay ran out.
        # The rule scores the transcript once it is known (within SCORE_TIMEOUT, plus the hop
        # to the model's thread and the commit: COMMIT_SLACK_S): a turn whose transcript came
        # so late (a busy machine's Whisper; the first call also meets the worker's idle
        # processes loading their models) that its score could not be in before the max delay
        # ends at the same time either way: only turns transcribed in time show whether the
        # rule held them to the max delay. (A CI pre-check: transcript 0.94 s, end 1.254 s.)
        ends = [(t.end_of_utterance_delay, t.transcription_delay) for t in turns
                if t.end_of_utterance_delay is not None]
        assert len(ends) >= 2, ends
        bound = settings.limits.endpointing_max_delay - 0.05
        assert not [(e, tr) for e, tr in ends
                    if e >= bound and (tr is None or tr + SCORE_TIMEOUT + COMMIT_SLACK_S < bound)], ends

    def finalised() -> bool:
        with session_scope(stack.db_url) as db:
            return bool(db.get(TranscriptReport, sid) and db.get(Summary, sid)
                        and db.scalars(select(SessionCost).where(SessionCost.session_id == sid)).first())

    await asyncio.to_thread(wait_for, finalised, 180, "report, summary and cost")
    with session_scope(stack.db_url) as db:
        usage = {(u.provider, u.metric): u.quantity for u in
                 db.scalars(select(UsageRecord).where(UsageRecord.session_id == sid))}
        assert usage.get(("local", "stt_audio_seconds"), 0) > 1
        assert usage.get(("local", "llm_output_tokens"), 0) > 0
        assert usage.get(("local", "tts_characters"), 0) > 0
        assert usage.get(("local", "avatar_seconds"), 0) > 1
        rec = db.get(AgentSessionRecord, sid)
        assert rec is not None and rec.end_reason == "caller_left"


async def test_speaking_over_the_avatar_stops_it(stack: Stack, artifacts_dir) -> None:  # type: ignore[no-untyped-def]
    """Interruption end to end: the caller talks over the answer and the avatar goes quiet.

    LiveKit's echo guard (AEC warm-up, 3 s from the agent's first word: the greeting) is over
    by the time the answer plays. The small model's answers vary in length: a call whose answer
    was already over (or in a long pause) when the caller spoke proves nothing either way and
    is made again, at most three times; an answer that went on over the caller fails at once.
    """
    settings = stack.settings()
    for _attempt in range(3):
        result = await run_call(settings, CallOptions(
            room=None, utterances=[], out_dir=artifacts_dir / "call", reply_timeout=90,
            interrupt_prompt="Please tell me a long story about a lighthouse keeper and the sea.",
            interrupt_after=1.0,
        ))
        print(result.render())
        assert result.error is None, result.render() + "\n--- live log ---\n" + stack.log_text("live")[-6000:]
        it = result.interruption
        assert it is not None and it.reply_started, (
            result.render() + "\n--- live log ---\n" + stack.log_text("live")[-8000:])
        sid = result.session_id
        assert sid
        await asyncio.to_thread(wait_for, lambda s=sid: _status(stack, s) == "ended", 60, "session ended")
        with session_scope(stack.db_url) as db:
            lines = db.scalars(select(TranscriptLine).where(TranscriptLine.session_id == sid)).all()
            cut = [ln for ln in lines if ln.speaker == "agent" and ln.interrupted]
        quiet_already = it.stop_latency_s is not None and it.stop_latency_s < 0.05
        if not it.spoke_over or quiet_already:
            # the answer was over, or in a pause, when the caller spoke: nothing was tested.
            # In a pause it is still cut (stored as "Aye," after a lead phrase on a busy
            # machine), but what the caller heard is then one word, too little to line up.
            continue
        if cut and not it.heard_text.strip():
            # cut, but the caller's own Whisper made nothing of what it heard (once, in a CI
            # run on a busy machine: stored "I'd love to talk", heard ''): the line-up below
            # cannot be judged. The sound is kept (it.heard_wav) to tell why; a product whose
            # reply never reaches the caller intelligibly fails all three calls.
            continue
        break
    assert cut, "the caller spoke over the answer, but it was never interrupted:\n" + result.render()
    # The avatar went quiet because it was interrupted (not because the answer ended: the
    # interrupted line above). How fast is measured in bench.turns.call, not here.
    assert it.stop_latency_s is not None and it.stop_latency_s < 4.0, result.render()
    # the interrupted reply is stored cut short: heard by the caller, not the whole answer
    stored = cut[0].text  # the answer spoken over (a reply to the interruption may follow)
    assert stored.strip() and it.heard_text.strip(), result.render()
    # the stored reply ends where the caller stopped hearing it: lined up with what Whisper
    # tiny heard, letter by letter (on a clip cut mid-word it respells the end: "The slide
    # house keepers." for "The story of a lighthouse keeper", and may add words: "I'll
    # remember that story. We tried to remove it." for "I'll try to remember that story,
    # but", or "the stories to like." for "The stories of a lighthouse", or respells the
    # middle: "mine. I like how I keep" for "Mine, a lighthouse keeper"), the two share at
    # least 8 letters in runs of 4 or more, and the stored reply runs at most two words past
    # the last run they share and the heard letters after it
    shared, words_past = cut_alignment(stored, it.heard_text)
    assert shared >= 8 and words_past is not None and words_past <= 2, (
        stored, it.heard_text, shared, words_past)
    # How close, over 12 voices: bench.turns.call --phases interruptions compares them (the
    # stored reply ran 0 words past what the caller heard in 9 of 12, 1 word in 3).


# how long the caller of the backchannel test listens for the answer to go on: a bound for a
# broken resume, not a timing goal
BACK_WITHIN_S = 12.0


async def test_a_backchannel_over_the_avatar_does_not_cut_its_answer(stack: Stack, artifacts_dir) -> None:  # type: ignore[no-untyped-def]
    """"Yeah." in another voice over the answer: the agent pauses for it and goes on, and
    the backchannel is no turn of the caller's. As above, a call whose answer was over
    before the caller spoke is made again."""
    settings = stack.settings()
    yeah = other_voice_wav("Yeah.", artifacts_dir / "yeah.wav", "flite")
    for _attempt in range(3):
        result = await run_call(settings, CallOptions(
            room=None, utterances=[], out_dir=artifacts_dir / "call", reply_timeout=90,
            interrupt_prompt="Please tell me a long story about a lighthouse keeper and the sea.",
            interrupt_after=1.0, interrupt_with=yeah, gap_window=BACK_WITHIN_S,
        ))
        print(result.render())
        assert result.error is None, result.render() + "\n--- live log ---\n" + stack.log_text("live")[-6000:]
        it = result.interruption
        assert it is not None and it.reply_started, result.render()
        sid = result.session_id
        assert sid
        await asyncio.to_thread(wait_for, lambda s=sid: _status(stack, s) == "ended", 60, "session ended")
        with session_scope(stack.db_url) as db:
            lines = db.scalars(select(TranscriptLine).where(TranscriptLine.session_id == sid)
                               .order_by(TranscriptLine.started_at)).all()
            agent = [(ln.text, ln.interrupted) for ln in lines if ln.speaker == "agent"]
            user = [ln.text for ln in lines if ln.speaker == "user"]
        if it.spoke_over:
            break
    assert it.spoke_over, "the answer was over each time before the caller spoke: nothing was tested"
    assert len(user) == 1, f"the backchannel was taken as a turn: {user}"  # the request only
    # it went on talking: no stop soon after the caller's "Yeah" (a quiet that begins later is
    # a gap between sentences, or the caller hanging up), or the sound came back after the
    # pause (a reply dropped for it stays quiet), or the answer was heard to its end. How long
    # the pause lasts is measured in bench.turns.call (over 4 s), not here: on a busy machine
    # the backchannel's transcript, which the resume waits for, took 5.6 s to come.
    stop = it.stop_latency_s
    went_on = (stop is None or stop > STOPPED_WITHIN_S or it.resumed_s is not None
               or (bool(agent) and not agent[-1][1]))
    if not went_on:
        (artifacts_dir / "live.log").write_text(stack.log_text("live"))
    assert went_on, (result.render(), agent, f"worker log: {artifacts_dir / 'live.log'}")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"greeting": None, "idle_timeout_seconds": 3}, "idle"),
        ({"greeting": None, "idle_timeout_seconds": 60, "max_session_minutes": 0.08}, "max_length"),
    ],
)
async def test_session_limits_end_the_session(stack: Stack, spec: dict[str, object], reason: str) -> None:
    """A silent caller stays in the room; the configured limit ends the session and says why."""
    from livekit import rtc

    from tasks.provisioning import mint_participant_token

    settings = stack.settings()
    room_name = f"limit-{reason}"
    with session_scope(stack.db_url) as db:
        rec = AgentSessionRecord(room=room_name, source="api", status="dispatched")
        db.add(rec)
        db.flush()
        sid = rec.id
    async with api.LiveKitAPI(settings.livekit.http_url, stack.livekit.api_key, stack.livekit.api_secret) as lk:
        await lk.room.create_room(api.CreateRoomRequest(name=room_name))
        await lk.agent_dispatch.create_dispatch(api.CreateAgentDispatchRequest(
            agent_name=settings.livekit.agent_name, room=room_name,
            metadata=json.dumps({**spec, "session_id": sid}),
        ))
    caller = rtc.Room()
    await caller.connect(settings.livekit.effective_url,
                         mint_participant_token(settings, room=room_name, identity="silent"))
    try:
        await asyncio.to_thread(wait_for, lambda: _status(stack, sid) == "ended", 90, "session ended")
    finally:
        await caller.disconnect()
    with session_scope(stack.db_url) as db:
        row = db.get(AgentSessionRecord, sid)
        assert row is not None and row.end_reason == reason

    # The worker's session end reaches the back office (a Celery message sent by task name; no
    # beat and no webhook run here, so only that message can bill the session).
    def billed() -> bool:
        with session_scope(stack.db_url) as db:
            return db.scalars(select(SessionCost).where(SessionCost.session_id == sid)).first() is not None

    await asyncio.to_thread(wait_for, billed, 90, "the session billed")
