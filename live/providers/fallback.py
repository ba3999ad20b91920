"""Fallback chains: a hosted slot backed by a local one, so an outage degrades the voice only.

STT, LLM and TTS use LiveKit Agents' own ``FallbackAdapter`` classes, which switch to the next
instance when one raises (connect failure, 5xx, socket closed, timeout) and probe the failed
one in the background until it recovers. Avatars are started once per session, so their chain
is simply tried in order at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from livekit import rtc
from livekit.agents import AgentSession, APIError, llm, stt, tts
from livekit.agents.vad import VAD
from livekit.agents.voice.io import AudioOutput

from live.providers.registry import ProviderError

logger = logging.getLogger(__name__)

NO_AVATAR = "none"


def build_stt_with_fallback(
    primary: stt.STT,
    fallback: stt.STT,
    *,
    vad: VAD | None = None,
    attempt_timeout: float = 10.0,
    max_retry_per_stt: int = 1,
    retry_interval: float = 5.0,
) -> stt.FallbackAdapter:
    """Streaming STT that switches to ``fallback`` when ``primary`` fails.

    The adapter is streaming; a non-streaming member (e.g. a local Whisper) is wrapped in
    ``stt.StreamAdapter``, which needs the session's VAD to cut utterances.
    """
    batch_only = [s.label for s in (primary, fallback) if not s.capabilities.streaming]
    if batch_only and vad is None:
        raise ProviderError(
            f"stt fallback needs a VAD: {', '.join(batch_only)} cannot stream on its own"
        )
    return stt.FallbackAdapter(
        [primary, fallback],
        vad=vad,
        attempt_timeout=attempt_timeout,
        max_retry_per_stt=max_retry_per_stt,
        retry_interval=retry_interval,
    )


def build_llm_with_fallback(
    primary: llm.LLM,
    fallback: llm.LLM,
    *,
    attempt_timeout: float = 10.0,
    max_retry_per_llm: int = 0,
    retry_interval: float = 0.5,
) -> llm.FallbackAdapter:
    """LLM that answers from ``fallback`` when ``primary`` fails before its first token.

    ``retry_on_chunk_sent`` stays off: once words were spoken, a second model restarting the
    answer would repeat them.
    """
    return llm.FallbackAdapter(
        [primary, fallback],
        attempt_timeout=attempt_timeout,
        max_retry_per_llm=max_retry_per_llm,
        retry_interval=retry_interval,
        retry_on_chunk_sent=False,
    )


def build_tts_with_fallback(
    primary: tts.TTS,
    fallback: tts.TTS,
    *,
    max_retry_per_tts: int = 1,
    sample_rate: int | None = None,
) -> tts.FallbackAdapter:
    """TTS that speaks with ``fallback`` when ``primary`` fails.

    The adapter resamples every member to one rate (``sample_rate``, default the highest), but
    cannot mix channel counts.
    """
    if primary.num_channels != fallback.num_channels:
        raise ProviderError(
            f"tts fallback: {primary.label} has {primary.num_channels} channel(s), "
            f"{fallback.label} has {fallback.num_channels}"
        )
    return tts.FallbackAdapter(
        [primary, fallback], max_retry_per_tts=max_retry_per_tts, sample_rate=sample_rate
    )


class Avatar(Protocol):
    async def start(self, agent_session: AgentSession, *, room: rtc.Room) -> None: ...


# Builds an avatar (or raises ProviderError); returning None means "no avatar".
AvatarFactory = Callable[[], Avatar | None]


def _describe(err: BaseException) -> str:
    """Our provider errors carry safe messages; anything else is cut short."""
    if isinstance(err, ProviderError | APIError):
        return str(err)
    if isinstance(err, TimeoutError):
        return "timed out waiting for the avatar to join"
    return f"{type(err).__name__}: {str(err)[:200]}"


def _audio_tail(agent_session: AgentSession) -> AudioOutput | None:
    cur = agent_session.output.audio
    while cur is not None and cur.next_in_chain is not None:
        cur = cur.next_in_chain
    return cur


def _restore_audio_tail(agent_session: AgentSession, tail: AudioOutput | None) -> None:
    """Undo a failed avatar's ``replace_audio_tail`` so the agent is not left talking to nobody."""
    if _audio_tail(agent_session) is tail:
        return
    if tail is None:
        agent_session.output.audio = None
    else:
        agent_session.output.replace_audio_tail(tail)


async def _close(avatar: Any) -> None:
    aclose = getattr(avatar, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.debug("closing a failed avatar raised", exc_info=True)


async def start_avatar_with_fallback(
    chain: Sequence[tuple[str, AvatarFactory]],
    agent_session: AgentSession,
    room: rtc.Room,
    *,
    join_timeout: float | None = None,
) -> str:
    """Start the first avatar of ``chain`` that works; return its name (``"none"`` if none).

    Each factory builds its avatar (a ``ProviderError`` such as "Hedra ... discontinued" counts
    as a failure), then ``start`` runs once: hosted adapters never retry their paid POST, the
    next entry is the retry. With ``join_timeout`` an avatar must also publish its video in
    time. One error is logged naming what failed and what is used instead; the conversation
    itself never depends on an avatar.
    """
    failures: list[str] = []
    active = NO_AVATAR
    for name, factory in chain:
        tail = _audio_tail(agent_session)
        avatar: Any = None
        try:
            avatar = factory()
            if avatar is None:
                active = name
                break
            await avatar.start(agent_session, room=room)
            if join_timeout is not None and hasattr(avatar, "wait_for_join"):
                await avatar.wait_for_join(timeout=join_timeout)
        except Exception as err:
            failures.append(f"{name}: {_describe(err)}")
            if avatar is not None:
                await _close(avatar)
            _restore_audio_tail(agent_session, tail)
            continue
        active = name
        break
    if failures:
        logger.error(
            "avatar %s failed; using %s (%s)",
            chain[0][0],
            "no avatar" if active == NO_AVATAR else repr(active),
            "; ".join(failures),
            extra={
                "room": room.name,
                "avatar": active,
                "failed": [f.split(":")[0] for f in failures],
            },
        )
    return active
