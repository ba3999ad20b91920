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
    JobContext,
    JobProcess,
    JobRequest,
    cli,
    room_io,
)

from config.settings import Settings, get_settings
from live.admission import Admission
from live.agent import AvatarAgent
from live.lifecycle import SessionLifecycle
from live.metadata import SessionSpec, SpecError, parse_spec
from live.pipeline import Components, build_components
from live.policy import enforce_spec, session_limits
from live.providers import ProviderContext
from live.recorder import SessionRecorder, checkpoints, session_usage, usage_rows
from store.models import SessionStatus, utcnow

logger = logging.getLogger("live.worker")
# How long a request at the cap waits for a finishing session's slot before it is declined.
ADMISSION_WAIT_SECONDS = 5.0
PREWARM_NICENESS = 10


def _restore_priority() -> None:
    """Back to normal priority, for every thread (on Linux, niceness is per thread and the
    model threads were started during the low-priority prewarm)."""
    tasks_dir = "/proc/self/task"
    tids = [int(t) for t in os.listdir(tasks_dir)] if os.path.isdir(tasks_dir) else [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, 0)
        except ProcessLookupError:
            continue  # that thread has ended
        except PermissionError:
            logger.debug("cannot raise the session's CPU priority back (needs CAP_SYS_NICE)")
            return


def _settings() -> Settings:
    return get_settings()


def prewarm(proc: JobProcess) -> None:
    """Load every local model once per job process; sessions of that process share them."""
    from config.logging import install_secret_mask
    from live.providers.local.prewarm import prewarm as load_local_models

    # The pool starts a replacement process whenever a session takes an idle one; its model
    # loading must not take CPU from the sessions already talking. The session raises its
    # priority back when it starts (where the OS allows it).
    os.nice(PREWARM_NICENESS)
    settings = _settings()
    install_secret_mask(settings.secret_values())
    ctx = ProviderContext(settings=settings, shared=proc.userdata)
    proc.userdata["provider_ctx"] = ctx
    load_local_models(ctx)
    if "local" in (settings.avatar.provider, settings.avatar.fallback):
        from live.providers.local_avatar import load_portrait

        load_portrait(settings.avatar, ctx)
    import tasks.maintenance  # noqa: F401  (imported now, not on the session's event loop)


def build_server(settings: Settings) -> AgentServer:
    admission: Admission | None = None

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
        num_idle_processes=min(2, settings.limits.max_concurrent_sessions),
        host="127.0.0.1",
        port=int(os.environ.get("LIVE_HEALTH_PORT", "8081")),
        ws_url=settings.livekit.effective_url,
        api_key=settings.livekit.api_key.get_secret_value(),
        api_secret=settings.livekit.api_secret.get_secret_value(),
        initialize_process_timeout=120.0,
    )
    admission = Admission(settings.limits.max_concurrent_sessions, running_ids)
    server.rtc_session(
        entrypoint,
        agent_name=settings.livekit.agent_name,
        on_request=on_request,
        on_session_end=on_session_end,
    )
    return server


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


def room_options(spec: SessionSpec) -> room_io.RoomOptions:
    """Speech from standard and SIP callers; typed text only if the session allows it
    (LiveKit enables `lk.chat` text input by default)."""
    return room_io.RoomOptions(
        text_input=spec.text_chat,
        close_on_disconnect=False,  # the lifecycle applies the configured grace period
        participant_kinds=[
            rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
            rtc.ParticipantKind.PARTICIPANT_KIND_SIP,
        ],
    )


async def entrypoint(ctx: JobContext) -> None:
    _restore_priority()
    settings = _settings()
    raw = ctx.job.metadata or ""
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
    recorder = SessionRecorder(settings.db.url, session_id)
    ctx.proc.userdata["recorder"] = recorder
    ctx.proc.userdata["session_id"] = session_id

    pctx: ProviderContext = ctx.proc.userdata.get("provider_ctx") or ProviderContext(
        settings=settings, shared=ctx.proc.userdata
    )
    from live.providers import turn

    turn_kwargs = turn.turn_handling(settings, pctx)
    vad = turn_kwargs["vad"]
    try:
        comps: Components = build_components(settings, spec, pctx, vad)
    except Exception as err:
        logger.error("job failed: cannot build providers: %s", err)
        recorder.set_status(SessionStatus.FAILED, error=str(err)[:2000], ended_at=utcnow())
        recorder.close()
        ctx.shutdown(reason="provider error")
        return

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

    await ctx.connect()
    await ctx.room.local_participant.set_attributes({"avatar.session_id": session_id})
    avatar_name = "none"
    avatar_started = time.time()
    if comps.avatar_chain:
        from live.providers import create
        from live.providers.fallback import start_avatar_with_fallback

        built: dict[str, Any] = {}

        def factory(name: str, opts: Any) -> Any:
            def build() -> Any:
                built[name] = create("avatar", name, opts, pctx)
                return built[name]

            return build

        chain = [(name, factory(name, opts)) for name, opts in comps.avatar_chain]

        def _avatar_lost(_lost: Any) -> None:
            ctx.proc.userdata["avatar_lost_at"] = time.time()  # stop metering avatar time

        avatar_name = await start_avatar_with_fallback(
            chain, session, ctx.room, on_avatar_lost=_avatar_lost
        )
        avatar = built.get(avatar_name)
        if avatar is not None:
            _link_mouth_to_voice(avatar, comps.tts)
            if hasattr(avatar, "aclose"):
                ctx.add_shutdown_callback(avatar.aclose)
    ctx.proc.userdata["avatar"] = (avatar_name, avatar_started)

    await session.start(
        agent=AvatarAgent(instructions=spec.instructions, knowledge=spec.knowledge),
        room=ctx.room,
        room_options=room_options(spec),
        record=False,
    )
    recorder.set_status(
        SessionStatus.ACTIVE,
        started_at=utcnow(),
        worker_id=os.environ.get("HOSTNAME", "") + f":{os.getpid()}",
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
    # Usage so far and a heartbeat every few seconds: a SIGKILLed worker loses only those.
    ctx.proc.userdata["checkpoints"] = asyncio.create_task(checkpoints(recorder, lambda: session_usage(
        session, ctx.proc.userdata.get("avatar"), ctx.proc.userdata.get("avatar_lost_at"))))
    if spec.greeting:
        session.say(spec.greeting)


def _tell_stt_when_agent_speaks(session: AgentSession[Any], stt: Any) -> None:
    """The local STT transcribes the caller's first words early, and passes no backchannel
    on, while the agent speaks: so "stop" interrupts quickly and "mm-hm" does not."""
    from live.providers.local_stt import LocalSTT

    if not isinstance(stt, LocalSTT):
        return

    @session.on("agent_state_changed")
    def _on_state(ev: Any) -> None:
        stt.agent_speaking = ev.new_state == "speaking"


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
    recorder.set_usage(rows)
    reason = lifecycle.end_reason if lifecycle else "ended"
    recorder.set_status(SessionStatus.ENDED, ended_at=utcnow(), end_reason=reason)
    await asyncio.to_thread(recorder.close)
    from tasks.maintenance import request_finalize

    # Never raises; if the broker refuses, reconciliation (the outbox) bills the session.
    await asyncio.to_thread(request_finalize, session_id)


def main() -> None:
    from config.logging import install_secret_mask

    settings = _settings()
    install_secret_mask(settings.secret_values())  # LiveKit's CLI sets up the handlers
    cli.run_app(build_server(settings))


if __name__ == "__main__":
    main()
