"""Anam hosted avatar through livekit-plugins-anam.

The plugin POSTs ``{api_url}/v1/engine/session`` (``Authorization: Bearer <key>``) with an
ephemeral persona (``personaConfig.avatarId``) and ``environment.livekitUrl/livekitToken``;
Anam's engine then joins the room as ``anam-avatar-agent`` and publishes for the agent. Wrapped
like Tavus (``HostedAvatar``): one POST, a bounded start, failures as credential-free LiveKit
``APIError`` so the session falls back. ``AVATAR__AVATAR_ID`` is the Anam avatar id.
"""

from __future__ import annotations

from livekit.agents import APIConnectOptions
from livekit.plugins import anam
from livekit.plugins.anam.api import DEFAULT_API_URL

from config.catalog import AnamOptions
from live.providers.registry import ProviderContext, ProviderError, missing_key, register
from live.providers.tavus import HostedAvatar, LiveKitCredentials

PERSONA_NAME = "avatar-agent"  # shown in Anam's console; the face is the avatar id's


@register("avatar", "anam")
def create_anam_avatar(options: AnamOptions, ctx: ProviderContext) -> HostedAvatar:
    """Anam avatar (``avatar_id``); the persona's voice and mind stay ours."""
    key = options.api_key.get_secret_value() if options.api_key else ""
    if not key:
        raise ProviderError(missing_key("avatar", "anam"))
    if not options.avatar_id:
        raise ProviderError("avatar provider 'anam' needs AVATAR__AVATAR_ID (an Anam avatar id)")
    session = anam.AvatarSession(
        persona_config=anam.PersonaConfig(name=PERSONA_NAME, avatarId=options.avatar_id),
        api_url=(options.base_url or DEFAULT_API_URL).rstrip("/"),
        api_key=key,
        conn_options=APIConnectOptions(max_retry=0, timeout=10.0),
    )
    return HostedAvatar(
        session,
        provider="anam",
        livekit=LiveKitCredentials.from_settings(ctx.settings.livekit),
        start_timeout=20.0,
        secrets=(key,),
    )
