"""Beyond Presence hosted avatar through livekit-plugins-bey.

The plugin POSTs ``{api_url}/v1/sessions`` (``x-api-key``) with ``{"transport": "livekit",
"avatar_id", "url", "token"}``; the vendor's worker then joins the room as
``bey-avatar-agent`` and publishes for the agent. Wrapped like Tavus (``HostedAvatar``): one
POST, a bounded start, failures as credential-free LiveKit ``APIError`` so the session falls
back. ``AVATAR__AVATAR_ID`` picks the avatar (empty: the vendor's stock one).
"""

from __future__ import annotations

from livekit.agents import NOT_GIVEN, APIConnectOptions
from livekit.plugins import bey

from config.catalog import BeyOptions
from live.providers.registry import ProviderContext, ProviderError, missing_key, register
from live.providers.tavus import HostedAvatar, LiveKitCredentials

DEFAULT_API_URL = "https://api.bey.dev"


@register("avatar", "bey")
def create_bey_avatar(options: BeyOptions, ctx: ProviderContext) -> HostedAvatar:
    """Beyond Presence avatar (``avatar_id``)."""
    key = options.api_key.get_secret_value() if options.api_key else ""
    if not key:
        raise ProviderError(missing_key("avatar", "bey"))
    session = bey.AvatarSession(
        avatar_id=options.avatar_id or NOT_GIVEN,
        api_url=(options.base_url or DEFAULT_API_URL).rstrip("/"),
        api_key=key,
        conn_options=APIConnectOptions(max_retry=0, timeout=10.0),
    )
    return HostedAvatar(
        session,
        provider="bey",
        livekit=LiveKitCredentials.from_settings(ctx.settings.livekit),
        start_timeout=20.0,
        secrets=(key,),
    )
