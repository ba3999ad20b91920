"""Tavus hosted avatar through livekit-plugins-tavus, guarded so a failing POST is not retried.

Starting a Tavus conversation is a paid POST (``/v2/conversations``). livekit-plugins-tavus 1.8.9
no longer retries a 4xx, but it still retries a 5xx and transport errors, where the first
request may already have created (and billed) a conversation, and its timeout covers only the
TCP connect, so a server that accepts and never answers hangs the session start. This adapter
builds the plugin with ``max_retry=0``, bounds the whole start with a timeout, and turns every
failure into one LiveKit ``APIError`` without credentials; the caller falls back to another
avatar instead of retrying.

Tavus's worker joins the LiveKit room itself, so ``LIVEKIT__PUBLIC_URL`` (or ``LIVEKIT__URL``)
must be reachable from the internet. ``AVATAR__BASE_URL`` overrides the API URL (tests use a
fake on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import (
    NOT_GIVEN,
    AgentSession,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
)
from livekit.agents.voice.avatar import AvatarSession
from livekit.plugins import tavus

from config.catalog import TavusOptions as TavusSettings
from config.settings import LiveKitSettings
from live.providers.registry import ProviderContext, ProviderError, missing_key, register

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://tavusapi.com/v2"


@dataclass(frozen=True)
class LiveKitCredentials:
    """Where a hosted avatar's worker joins, and the keys to mint its token."""

    url: str
    api_key: str
    api_secret: str

    @classmethod
    def from_settings(cls, lk: LiveKitSettings) -> LiveKitCredentials:
        return cls(
            url=lk.browser_url,  # the public URL: the vendor's worker is not on our network
            api_key=lk.api_key.get_secret_value(),
            api_secret=lk.api_secret.get_secret_value(),
        )


@dataclass(frozen=True)
class TavusOptions:
    """What the plugin is built from; frozen so a running session never sees it change."""

    api_key: str
    face_id: str
    pal_id: str
    api_url: str
    connect_timeout: float = 10.0
    start_timeout: float = 20.0

    @classmethod
    def from_settings(cls, options: TavusSettings) -> TavusOptions:
        key = options.api_key.get_secret_value() if options.api_key else None
        if not key:
            raise ProviderError(missing_key("avatar", "tavus"))
        return cls(
            api_key=key,
            face_id=options.avatar_id,
            pal_id=options.replica_id,
            api_url=(options.base_url or DEFAULT_API_URL).rstrip("/"),
        )


def _mask(text: str | None, secrets: tuple[str, ...], limit: int = 300) -> str | None:
    """A vendor's error body, cut short and with our secrets removed (bodies may echo them)."""
    if not text:
        return None
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:limit]


class HostedAvatar(AvatarSession):
    """One hosted-avatar plugin session, started at most once; failures are final.

    A LiveKit ``AvatarSession`` around the plugin's own (``start`` mints the avatar's token and
    POSTs it to the vendor): it delegates joining, metrics and closing to it, and changes only
    ``start``, which raises a LiveKit ``APIError`` (``retryable=False``) with no credentials in
    its message or chain, so the caller can log it and fall back.
    """

    def __init__(
        self,
        session: Any,
        *,
        provider: str,
        livekit: LiveKitCredentials,
        start_timeout: float,
        secrets: tuple[str, ...],
    ) -> None:
        super().__init__()
        self._session = session
        self._provider = provider
        self._livekit = livekit
        self._start_timeout = start_timeout
        self._secrets = (*secrets, livekit.api_secret)
        self._started = False
        # the plugin session reports join and playback metrics; pass them on from here too
        if isinstance(session, AvatarSession):
            session.on("metrics_collected", lambda m: self.emit("metrics_collected", m))

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def avatar_identity(self) -> str:
        return str(self._session.avatar_identity)

    @property
    def plugin_session(self) -> Any:
        """The plugin's ``AvatarSession`` (e.g. for ``tavus.AvatarSession.set_emotion``)."""
        return self._session

    async def start(self, agent_session: AgentSession, room: rtc.Room) -> None:
        """POST once; on success the session's audio goes to the avatar participant.

        The base class's ``start`` is not called: the plugin session's does its work."""
        if self._started:
            raise RuntimeError(f"{self._provider} avatar already started")
        self._started = True
        failure: APIError | None = None
        try:
            await asyncio.wait_for(
                self._session.start(
                    agent_session,
                    room,
                    livekit_url=self._livekit.url,
                    livekit_api_key=self._livekit.api_key,
                    livekit_api_secret=self._livekit.api_secret,
                ),
                timeout=self._start_timeout,
            )
        except TimeoutError:
            failure = APITimeoutError(
                f"{self._provider} did not answer within {self._start_timeout:.0f}s",
                retryable=False,
            )
        except APIStatusError as err:
            failure = APIStatusError(
                f"{self._provider} refused to start the avatar",
                status_code=err.status_code,
                body=_mask(str(err.body) if err.body is not None else None, self._secrets),
                retryable=False,
            )
        except APIError as err:
            failure = APIConnectionError(
                f"{self._provider} API unreachable ({type(err.__cause__ or err).__name__})",
                retryable=False,
            )
        except Exception as err:
            # not a transport error (the plugin wraps those); still mask our secrets
            detail = _mask(str(err), self._secrets, limit=200)
            failure = APIConnectionError(
                f"{self._provider} avatar failed to start ({type(err).__name__}: {detail})",
                retryable=False,
            )
        if failure is not None:
            # raised outside the except blocks: no __context__ carries the plugin's error
            # (its body, URL or headers) along with ours
            await self._cleanup()
            raise failure
        logger.info(
            "hosted avatar started",
            extra={
                "provider": self._provider,
                "conversation_id": getattr(self._session, "conversation_id", None),
                "room": room.name,
            },
        )

    async def wait_for_join(self, *, timeout: float | None = 30.0) -> None:
        """Until the avatar participant has published its video (``asyncio.TimeoutError``)."""
        await self._session.wait_for_join(timeout=timeout)

    async def aclose(self) -> None:
        await self._session.aclose()

    async def _cleanup(self) -> None:
        try:
            await self._session.aclose()
        except Exception:  # cleanup of a failed start must not hide the original failure
            logger.debug("avatar cleanup failed", extra={"provider": self._provider})


def build_avatar(opts: TavusOptions, livekit: LiveKitCredentials) -> HostedAvatar:
    """The plugin session with retries off: one POST per session start."""
    session = tavus.AvatarSession(
        face_id=opts.face_id or NOT_GIVEN,
        pal_id=opts.pal_id or NOT_GIVEN,
        api_url=opts.api_url,
        api_key=opts.api_key,
        conn_options=APIConnectOptions(max_retry=0, timeout=opts.connect_timeout),
    )
    return HostedAvatar(
        session,
        provider="tavus",
        livekit=livekit,
        start_timeout=opts.start_timeout,
        secrets=(opts.api_key,),
    )


@register("avatar", "tavus")
def create_tavus_avatar(options: TavusSettings, ctx: ProviderContext) -> HostedAvatar:
    """Tavus avatar from the ``avatar`` settings group (face = avatar_id, pal = replica_id)."""
    return build_avatar(
        TavusOptions.from_settings(options), LiveKitCredentials.from_settings(ctx.settings.livekit)
    )
