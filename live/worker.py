"""The live worker: a LiveKit Agents server, one AgentSession per dispatched room.

Only wiring lives here: prewarm, admission, the rtc_session entrypoint and session end.
`python -m live.worker start` (Procfile `live`); `avatar up` runs the same command.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from typing import Any

from livekit import rtc
from livekit.agents import (
    AgentServer,
    AgentSession,
    AutoSubscribe,
    JobContext,
    JobExecutorType,
    JobProcess,
    JobRequest,
    cli,
    room_io,
)

from config.policy import enforce_spec, session_limits
from config.session import SessionSpec, SpecError, parse_spec
from config.settings import Settings, get_settings
from engines.store import process_models
from live.admission import Admission
from live.agent import AvatarAgent
from live.lifecycle import SessionLifecycle
from live.pipeline import Components, build_components, load_fallbacks
from live.providers.registry import ProviderContext
from live.recorder import SessionRecorder, checkpoints, session_usage, usage_rows
from store.models import SessionStatus, utcnow
from store.resume import (
    RESUME_LINE,
    SESSION_ATTR,
    WORKER_ATTR,
    claim_session,
    holds_session,
    job_worker_id,
    plus_baseline,
    restored_chat,
    split_resume,
    stored_lines,
    stored_usage,
)

logger = logging.getLogger("live.worker")
# How long a request at the cap waits for a finishing session's slot before it is declined.
# LiveKit gives a job request 3 s in all (then drops the job: `context deadline exceeded`),
# so the answer, a decline included, must come well within that.
ADMISSION_WAIT_SECONDS = 2.0
PREWARM_NICENESS = 10
# the job process's niceness before prewarm lowered it: the worker's own (e.g. `nice -n 15`
# on a shared machine), which the session returns to, never a higher priority than it
_base_niceness = 0


def _restore_priority() -> None:
    """Back to the worker's priority, for every thread (on Linux, niceness is per thread and
    the model threads were started during the low-priority prewarm)."""
    tasks_dir = "/proc/self/task"
    tids = [int(t) for t in os.listdir(tasks_dir)] if os.path.isdir(tasks_dir) else [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, _base_niceness)
        except ProcessLookupError:
            continue  # that thread has ended
        except PermissionError:
            logger.debug("cannot raise the session's CPU priority back (needs CAP_SYS_NICE)")
            return


def _lower_priority() -> None:
    """For the prewarm: remember the worker's niceness, then go PREWARM_NICENESS below it."""
    global _base_niceness
    _base_niceness = os.nice(0)
    os.nice(PREWARM_NICENESS)


def _settings() -> Settings:
    return get_settings()


def prewarm(proc: JobProcess) -> None:
    """Load every local model once per job process; sessions of that process share them."""
    from config.logging import install_secret_mask
    from live.providers.local.prewarm import prewarm as load_local_models

    # The pool starts a replacement process whenever a session takes an idle one; its model
    # loading must not take CPU from the sessions already talking. The session raises its
    # priority back when it starts (where the OS allows it).
    settings = _settings()
    if settings.limits.job_executor == "process":
        _lower_priority()
    install_secret_mask(settings.secret_values())
    ctx = process_models(settings)
    load_local_models(ctx)
    from live.backoffice import sender

    sender(settings)  # Celery imported and built now, not on the session's event loop


def build_server(settings: Settings) -> AgentServer:
    admission: Admission | None = None
    if settings.limits.job_executor == "thread":
        # LiveKit plugins register on the main thread only, and here jobs run on others
        from livekit.plugins import silero  # noqa: F401  (the VAD, imported lazily elsewhere)

        import live.providers  # noqa: F401  (every provider module, their plugins too)

    def running_ids() -> list[str]:
        return [j.job.id for j in server.active_jobs]

    async def on_request(req: JobRequest) -> None:
        assert admission is not None
        if not await admission.try_reserve(req.id, wait=ADMISSION_WAIT_SECONDS):
            logger.info(
                "declining job: at the concurrent-session cap",
                extra={"job_id": req.id, "room": req.room.name, "cap": admission.cap},
            )
            await req.reject(terminate=False)  # another worker may take it
            return
        # LiveKit learns a worker's load every 2.5 s; a cluster routes the next job by it.
        await _report_load_now(server)
        try:
            await req.accept(name="Ava", identity=f"agent-{req.id}")
        finally:
            admission.release(req.id)

    def load() -> float:
        return admission.load() if admission else 0.0

    server = AgentServer(
        setup_fnc=prewarm,
        load_fnc=load,
        # LiveKit's threshold would answer "unavailable" before on_request runs (and can
        # over-accept, livekit/agents#4884); the Admission cap is the one exact gate.
        load_threshold=math.inf,
        job_executor_type=(JobExecutorType.THREAD if settings.limits.job_executor == "thread"
                           else JobExecutorType.PROCESS),
        num_idle_processes=min(2, settings.limits.max_concurrent_sessions),
        host="127.0.0.1",
        port=int(os.environ.get("LIVE_HEALTH_PORT", "8081")),
        ws_url=settings.livekit.effective_url,
        api_key=settings.livekit.api_key.get_secret_value(),
        api_secret=settings.livekit.api_secret.get_secret_value(),
        initialize_process_timeout=120.0,
        # LiveKit's CLI sets up the handlers at this level (INFO otherwise, whatever
        # LOGGING__LEVEL says): one setting for every process
        log_level=settings.logging.level,
    )
    admission = Admission(settings.limits.max_concurrent_sessions, running_ids)
    logger.info("session cap %d (%s)", settings.limits.max_concurrent_sessions,
                settings.session_cap_reason)
    _report_lost_jobs(server, settings)
    server.rtc_session(
        entrypoint,
        agent_name=settings.livekit.agent_name,
        on_request=on_request,
        on_session_end=on_session_end,
    )
    return server


def _report_lost_jobs(server: AgentServer, settings: Settings) -> None:
    """A job process that dies (SIGKILL, the OOM killer, a crash) leaves its agent in the
    room until LiveKit's media timeout (about 20 s). This worker sees the death at once and
    removes the agent, so LiveKit reports `participant_left` now and the back office
    dispatches the session again (`tasks.resume`). Uses the process pool's `process_closed`
    event (not a public API in LiveKit Agents 1.8)."""

    def on_closed(proc: Any) -> None:
        job = getattr(proc, "running_job", None)
        status = getattr(getattr(proc, "status", None), "value", None)
        if job is None or status != "failed":
            return
        room, identity = job.job.room.name, f"agent-{job.job.id}"
        logger.warning("job process died mid-session; removing its agent from the room",
                       extra={"job_id": job.job.id, "room": room, "exitcode":
                              getattr(proc, "exitcode", None)})
        task = asyncio.get_running_loop().create_task(_remove_agent(settings, room, identity))
        _background.add(task)
        task.add_done_callback(_background.discard)

    def attach() -> None:
        from live.lk_compat import on_job_process_closed

        if not on_job_process_closed(server, on_closed):
            logger.warning("cannot watch job processes: a dead job's agent stays in the room "
                           "until LiveKit's timeout")

    server.on("worker_started", attach)


_background: set[asyncio.Task[None]] = set()


async def _remove_agent(settings: Settings, room: str, identity: str) -> None:
    from livekit import api

    try:
        async with api.LiveKitAPI(settings.livekit.http_url,
                                  settings.livekit.api_key.get_secret_value(),
                                  settings.livekit.api_secret.get_secret_value()) as lk:
            await lk.room.remove_participant(
                api.RoomParticipantIdentity(room=room, identity=identity))
    except Exception as err:  # gone already, or LiveKit unreachable: its timeout applies
        logger.info("could not remove the lost agent: %s", type(err).__name__,
                    extra={"room": room})


async def _report_load_now(server: AgentServer) -> None:
    """Send this worker's load to LiveKit now rather than at its next 2.5 s update.

    In a cluster, LiveKit gives a job to the node whose workers report the most headroom;
    a worker that just took a job but still reports its old load would win the next job
    too and have to decline it (LiveKit does not offer a declined job to another node).
    Uses the worker's own status update (``live.lk_compat.report_load_now``).
    """
    from live.lk_compat import report_load_now

    try:
        await report_load_now(server)
    except Exception:
        logger.debug("could not report the load early", exc_info=True)


def _ensure_record(settings: Settings, spec: SessionSpec, ctx: JobContext) -> str:
    """A dispatch that did not come through provisioning still gets a session record."""
    from sqlalchemy import select

    from store.db import session_scope
    from store.models import AgentSessionRecord

    with session_scope(settings.db.url) as db:
        if spec.session_id:
            rec = db.get(AgentSessionRecord, spec.session_id)
            if rec is not None:
                return rec.id
        key = f"dispatch:{ctx.job.id}"
        existing = db.scalar(select(AgentSessionRecord).where(AgentSessionRecord.request_key == key))
        if existing is not None:
            return existing.id
        rec = AgentSessionRecord(
            room=ctx.job.room.name,
            request_key=key,
            source="dispatch",
            spec=spec.model_dump(mode="json"),
            status=SessionStatus.DISPATCHED,
        )
        if spec.session_id:
            rec.id = spec.session_id
        db.add(rec)
        db.flush()
        return rec.id


def _fail_invalid_metadata(settings: Settings, raw: str, err: Exception) -> None:
    """Mark the session failed if its id can be read from the (invalid) metadata."""
    try:
        session_id = json.loads(raw).get("session_id")
    except Exception:
        session_id = None
    if not isinstance(session_id, str):
        return
    from store.db import session_scope
    from store.models import AgentSessionRecord

    with session_scope(settings.db.url) as db:
        rec = db.get(AgentSessionRecord, session_id)
        if rec is not None:
            rec.status = SessionStatus.FAILED
            rec.error = str(err)[:2000]
            rec.ended_at = utcnow()


def room_options(spec: SessionSpec, *, gain_control: bool = True,
                 frame_ms: int = 50) -> room_io.RoomOptions:
    """Speech from standard and SIP callers; typed text only if the session allows it
    (LiveKit enables `lk.chat` text input by default). ``gain_control``: ``STT__GAIN_CONTROL``;
    ``frame_ms``: ``STT__FRAME_MS``."""
    return room_io.RoomOptions(
        text_input=spec.text_chat,
        audio_input=room_io.AudioInputOptions(auto_gain_control=gain_control,
                                              frame_size_ms=frame_ms),
        close_on_disconnect=False,  # the lifecycle applies the configured grace period
        participant_kinds=[
            rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
            rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
        ],
    )


async def entrypoint(ctx: JobContext) -> None:
    settings = _settings()
    if settings.limits.job_executor == "process":
        _restore_priority()
    raw, resume_from = split_resume(ctx.job.metadata or "")
    try:
        spec = parse_spec(raw)
        enforce_spec(spec, settings)
    except SpecError as err:
        logger.error("job failed: %s", err, extra={"job_id": ctx.job.id, "room": ctx.job.room.name})
        await asyncio.to_thread(_fail_invalid_metadata, settings, raw, err)
        ctx.shutdown(reason="invalid metadata")
        return

    session_id = await asyncio.to_thread(_ensure_record, settings, spec, ctx)
    ctx.log_context_fields = {"session_id": session_id, "room": ctx.job.room.name}
    worker_id = job_worker_id(ctx.job.id)
    if not await asyncio.to_thread(claim_session, settings.db.url, session_id, worker_id,
                                   resume_from):
        # Another job holds the session (a repeated dispatch), or it has ended: one agent.
        logger.warning("session already has an agent or has ended; leaving",
                       extra={"resume_from": resume_from})
        ctx.shutdown(reason="session taken")
        return
    ctx.proc.userdata["worker_id"] = worker_id
    history: list[Any] = []
    if resume_from:
        history = await asyncio.to_thread(stored_lines, settings.db.url, session_id)
        ctx.proc.userdata["usage_baseline"] = await asyncio.to_thread(
            stored_usage, settings.db.url, session_id)
        logger.info("resuming the session on this worker",
                    extra={"lines": len(history), "resume_from": resume_from})
    recorder = SessionRecorder(settings.db.url, session_id)
    ctx.proc.userdata["recorder"] = recorder
    ctx.proc.userdata["session_id"] = session_id

    pctx = process_models(settings)  # prewarm filled it
    from live.providers import turn

    vad = turn.get_vad(pctx)
    try:
        comps: Components = await load_fallbacks(build_components(settings, spec, pctx, vad))
    except Exception as err:
        logger.error("job failed: cannot build providers: %s", err)
        recorder.set_status(SessionStatus.FAILED, error=str(err)[:2000], ended_at=utcnow())
        recorder.close()
        ctx.shutdown(reason="provider error")
        return
    turn_kwargs = turn.turn_handling(settings, pctx, can_pause=_output_can_pause(comps),
                                     stt=comps.stt)

    session: AgentSession[Any] = AgentSession(
        stt=comps.stt,
        llm=comps.llm,
        tts=comps.tts,
        **turn_kwargs,
        user_away_timeout=None,
        use_tts_aligned_transcript=True,  # captions word by word, as spoken (Piper, Cartesia)
    )
    ctx.proc.userdata["agent_session"] = session
    _attach_recorder(session, recorder, spec)
    _tell_stt_when_agent_speaks(session, comps.stt)
    _read_ahead_between_turns(session, comps.llm)
    _follow_session(session, comps.stt)

    # Audio only: the agent listens to the caller; subscribing to video would decode the
    # hosted avatar's frames (and a caller's camera) in every job process for nothing.
    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    await ctx.room.local_participant.set_attributes(
        {SESSION_ATTR: session_id, WORKER_ATTR: worker_id})
    avatar_name = "none"
    avatar: Any = None
    avatar_started = time.time()
    if comps.avatar_chain:
        from live.providers.fallback import start_avatar_with_fallback

        built: dict[str, Any] = {}
        chain = avatar_factories(comps.avatar_chain, pctx, built)

        def _avatar_lost(_lost: Any) -> None:
            ctx.proc.userdata["avatar_lost_at"] = time.time()  # stop metering avatar time

        avatar_name = await start_avatar_with_fallback(
            chain, session, ctx.room, on_avatar_lost=_avatar_lost
        )
        avatar = built.get(avatar_name)
        if avatar is not None:
            _link_mouth_to_voice(avatar, comps.tts)
            _link_resume_to_stt(avatar, comps.stt)
            if hasattr(avatar, "aclose"):
                ctx.add_shutdown_callback(avatar.aclose)
    ctx.proc.userdata["avatar"] = (avatar_name, avatar_started)

    await session.start(
        agent=AvatarAgent(instructions=spec.instructions, knowledge=spec.knowledge,
                          chat_ctx=restored_chat(history) if history else None),
        room=ctx.room,
        room_options=room_options(spec, gain_control=settings.stt.gain_control,
                                  frame_ms=settings.stt.frame_ms),
        record=False,
    )
    from live.lk_compat import keep_played_words

    # an interrupted reply is stored (and remembered) as far as its sound played
    keep_played_words(session.output.audio)
    _link_captions_to_sound(avatar, session)
    _resume_when_no_words(avatar, comps.stt)
    recorder.set_status(
        SessionStatus.ACTIVE,
        **({} if resume_from else {"started_at": utcnow()}),
        worker_id=worker_id,
        stt_provider=comps.stt_name,
        llm_provider=comps.llm_name,
        tts_provider=comps.tts_name,
        avatar_provider=avatar_name,
    )
    max_minutes, idle_seconds = session_limits(spec, settings)
    lifecycle = SessionLifecycle(
        ctx,
        session,
        max_minutes=max_minutes,
        idle_seconds=idle_seconds,
        grace_seconds=settings.limits.caller_grace_seconds,
    )
    ctx.proc.userdata["lifecycle"] = lifecycle
    lifecycle.start()
    from live.room_loss import RoomLossWatch

    # The room's node may die: no webhook then, only this job sees it (live.room_loss).
    watch = RoomLossWatch(
        ctx.room, active=lambda: lifecycle.end_reason == "ended",
        on_lost=lambda why: _hand_back(ctx, settings, session_id, worker_id, why))
    lifecycle.room_down = lambda: watch.reconnecting
    ctx.proc.userdata["room_loss"] = watch
    watch.start()
    # Usage so far and a heartbeat every few seconds: a SIGKILLed worker loses only those.
    # After a resume, the earlier jobs' usage is the baseline this job counts on top of.
    ctx.proc.userdata["checkpoints"] = asyncio.create_task(checkpoints(recorder, lambda: plus_baseline(
        session_usage(session, ctx.proc.userdata.get("avatar"),
                      ctx.proc.userdata.get("avatar_lost_at")),
        ctx.proc.userdata.get("usage_baseline"))))
    if resume_from:
        session.say(RESUME_LINE)
    elif spec.greeting:
        session.say(spec.greeting)


async def _hand_back(
    ctx: JobContext, settings: Settings, session_id: str, worker_id: str, why: str
) -> None:
    """The room is gone with its node: store the usage so far (the resumed job counts on top
    of it, so it must be written before the resume), ask for the resume, leave the session
    open. The heartbeat stops: if the resume cannot be asked for, reconciliation ends it."""
    checkpoint_task: asyncio.Task[None] | None = ctx.proc.userdata.pop("checkpoints", None)
    if checkpoint_task is not None:
        checkpoint_task.cancel()
    recorder: SessionRecorder | None = ctx.proc.userdata.get("recorder")
    if recorder is not None:
        recorder.set_usage(plus_baseline(
            session_usage(ctx.proc.userdata.get("agent_session"), ctx.proc.userdata.get("avatar"),
                          ctx.proc.userdata.get("avatar_lost_at")),
            ctx.proc.userdata.get("usage_baseline")))
        await asyncio.to_thread(recorder.flush, 10.0)
    from live.backoffice import request_resume

    await asyncio.to_thread(request_resume, settings, session_id, worker_id)
    logger.info("session handed back for a resume", extra={"why": why})
    ctx.shutdown(reason="room_lost")


def _output_can_pause(comps: Components) -> bool:
    """The agent's voice goes to the room itself or to the in-process local face: both can
    pause. A hosted avatar, or the local one as its own participant, cannot (LiveKit's
    data-stream output has no pause); if a fallback swaps one in, the session's audio output
    says so and LiveKit interrupts instead of pausing."""
    if not comps.avatar_chain:
        return True
    name, opts = comps.avatar_chain[0]
    return name == "local" and getattr(opts, "local_mode", "in-process") == "in-process"


def avatar_factories(
    chain: list[tuple[str, Any]], pctx: ProviderContext, built: dict[str, Any]
) -> list[tuple[str, Any]]:
    """``start_avatar_with_fallback``'s chain: each entry builds its avatar into ``built``.

    The local face's portrait pack is loaded in a thread first: as a hosted avatar's
    fallback it is not preloaded (``live.providers.local.prewarm``), and loading it on the
    event loop would stall the session's audio right when the hosted face has just failed.
    """
    from live.providers import create

    def factory(name: str, opts: Any) -> Any:
        async def build() -> Any:
            if name == "local":
                from live.providers.local_avatar import load_portrait

                await asyncio.to_thread(load_portrait, opts, pctx)
            built[name] = create("avatar", name, opts, pctx)
            return built[name]

        return build

    return [(name, factory(name, opts)) for name, opts in chain]


def _tell_stt_when_agent_speaks(session: AgentSession[Any], stt: Any) -> None:
    """The local STT transcribes the caller's first words early, and passes no backchannel
    on, while the agent speaks: so "stop" interrupts quickly and "mm-hm" does not."""
    from live.providers.local_stt import LocalSTT

    if not isinstance(stt, LocalSTT):
        return

    @session.on("agent_state_changed")
    def _on_state(ev: Any) -> None:
        stt.agent_speaking = ev.new_state == "speaking"

    @session.on("user_input_transcribed")
    def _on_transcribed(ev: Any) -> None:
        if ev.is_final:
            stt.final_received()  # a turn detector waiting for it may let go


def _read_ahead_between_turns(session: AgentSession[Any], llm: Any) -> None:
    """Once a reply is stored, the local LLM reads the conversation and the head of the next
    question while the caller is still to speak: the next reply's first token then waits only
    for the caller's own words."""
    from livekit.agents.llm import ChatMessage

    from live.providers.local_llm import LocalLLM

    if not isinstance(llm, LocalLLM):
        return

    @session.on("conversation_item_added")
    def _on_item(ev: Any) -> None:
        if not isinstance(ev.item, ChatMessage) or ev.item.role != "assistant":
            return
        agent = session.current_agent
        context = getattr(agent, "prompt_context", None)
        chat_ctx = agent.chat_ctx
        llm.read_ahead(context(chat_ctx) if context is not None else chat_ctx)


def _follow_session(session: AgentSession[Any], stt: Any) -> None:
    """A hosted STT with a fallback learns from the session's own VAD when the caller has
    stopped speaking, to tell a stalled vendor from a quiet caller (no second VAD runs)."""
    from live.providers.fallback import STTFallback

    if isinstance(stt, STTFallback):
        stt.follow(session)


def _link_resume_to_stt(avatar: Any, stt: Any) -> None:
    """A reply paused by the caller's voice resumes only once the local STT has heard that
    the caller said no words (a backchannel), never for a moment before an interruption."""
    from live.providers.local_stt import LocalSTT

    hold = getattr(avatar, "wait_for_words_before_resuming", None)
    if hold is not None and isinstance(stt, LocalSTT):
        hold(stt.words_since)
        stt.agent_held = avatar.reply_held  # speech during a pause is speech over the agent


def _resume_when_no_words(avatar: Any, stt: Any) -> None:
    """A reply paused by the caller's voice goes on as soon as the local STT has heard the
    caller stop without words (a backchannel), not when the session's timer runs out."""
    from live.providers.local_stt import LocalSTT

    link = getattr(avatar, "resume_when_no_words", None)
    if link is not None and isinstance(stt, LocalSTT):
        link(stt.no_words_since, stt.heard_no_words)


def _link_captions_to_sound(avatar: Any, session: AgentSession[Any]) -> None:
    """The captions wait out the silences inside a reply (a busy machine: the voice or the
    face fell behind), so they stay with the words the caller hears."""
    from live.lk_compat import delay_captions

    listen = getattr(avatar, "on_sound_gap", None)
    if listen is not None:
        listen(lambda seconds: delay_captions(session.output.audio, seconds))


def _link_mouth_to_voice(avatar: Any, tts: Any) -> None:
    """The local TTS reports phoneme timings; the in-process local avatar shapes the mouth."""
    callback = getattr(avatar, "alignment_callback", None)
    if callback is not None and hasattr(tts, "on_alignment"):
        tts.on_alignment = callback


def _attach_recorder(session: AgentSession[Any], recorder: SessionRecorder, spec: SessionSpec) -> None:
    from livekit.agents import ConversationItemAddedEvent, SessionUsageUpdatedEvent
    from livekit.agents.llm import ChatMessage

    last_user_metrics: dict[str, float] = {}

    @session.on("conversation_item_added")
    def _on_item(ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, ChatMessage) or item.role not in ("user", "assistant"):
            return
        text = item.text_content or ""
        m: dict[str, Any] = dict(item.metrics or {})
        recorder.add_line(
            item_id=item.id,
            speaker="user" if item.role == "user" else "agent",
            text=text,
            started_at=m.get("started_speaking_at") or item.created_at,
            ended_at=m.get("stopped_speaking_at"),
            interrupted=bool(item.interrupted),
            language=spec.language,
        )
        if item.role == "user":
            last_user_metrics.clear()
            for k in ("transcription_delay", "end_of_turn_delay"):
                if k in m:
                    last_user_metrics[k] = float(m[k])
        else:
            recorder.add_turn(
                item_id=item.id,
                metrics={
                    "end_of_utterance_delay": last_user_metrics.get("end_of_turn_delay"),
                    "transcription_delay": last_user_metrics.get("transcription_delay"),
                    "llm_ttft": m.get("llm_node_ttft"),
                    "tts_ttfb": m.get("tts_node_ttfb"),
                    "avatar_first_frame": m.get("playback_latency"),
                    "e2e_latency": m.get("e2e_latency"),
                },
            )

    @session.on("session_usage_updated")
    def _on_usage(ev: SessionUsageUpdatedEvent) -> None:
        recorder.set_usage(usage_rows(ev.usage.model_usage))


async def on_session_end(ctx: JobContext) -> None:
    """Final usage, status, and the back office's post-processing, in that order."""
    watch = ctx.proc.userdata.pop("room_loss", None)
    if watch is not None and watch.lost_task is not None:
        # The room was lost and the session handed back (_hand_back): never ended here.
        try:
            await asyncio.wait_for(asyncio.shield(watch.lost_task), 30.0)
        except Exception:
            logger.exception("handing the session back failed")
        lost_recorder: SessionRecorder | None = ctx.proc.userdata.pop("recorder", None)
        if lost_recorder is not None:
            await asyncio.to_thread(lost_recorder.close)
        return
    recorder: SessionRecorder | None = ctx.proc.userdata.pop("recorder", None)
    session: AgentSession[Any] | None = ctx.proc.userdata.pop("agent_session", None)
    lifecycle: SessionLifecycle | None = ctx.proc.userdata.pop("lifecycle", None)
    session_id = ctx.proc.userdata.pop("session_id", None)
    checkpoint_task: asyncio.Task[None] | None = ctx.proc.userdata.pop("checkpoints", None)
    if checkpoint_task is not None:
        checkpoint_task.cancel()
    if recorder is None or session_id is None:
        return
    rows = session_usage(
        session, ctx.proc.userdata.pop("avatar", None), ctx.proc.userdata.pop("avatar_lost_at", None)
    )
    recorder.set_usage(plus_baseline(rows, ctx.proc.userdata.pop("usage_baseline", None)))
    worker_id = ctx.proc.userdata.pop("worker_id", None)
    try:
        held = not worker_id or await asyncio.to_thread(
            holds_session, _settings().db.url, session_id, worker_id)
    except Exception:  # the store is away: end it as before
        held = True
    if not held:
        # Cut off from the room and resumed by another job: that job ends the session.
        logger.warning("session moved to another job; not ending it here")
        await asyncio.to_thread(recorder.close)
        return
    reason = lifecycle.end_reason if lifecycle else "ended"
    recorder.set_status(SessionStatus.ENDED, ended_at=utcnow(), end_reason=reason)
    await asyncio.to_thread(recorder.close)
    from live.backoffice import request_finalize

    # Never raises; if the broker refuses, reconciliation (the outbox) bills the session.
    await asyncio.to_thread(request_finalize, _settings(), session_id)


def main() -> None:
    from config.logging import install_secret_mask

    settings = _settings()
    install_secret_mask(settings.secret_values())  # LiveKit's CLI sets up the handlers
    cli.run_app(build_server(settings))


if __name__ == "__main__":
    main()
