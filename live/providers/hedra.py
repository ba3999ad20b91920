"""Hedra hosted avatar through livekit-plugins-hedra: currently discontinued by the vendor.

livekit-plugins-hedra 1.7.1 raises ``HedraException`` from ``AvatarSession(...)``: Hedra turned
its realtime avatar service off. The factory turns that into a clear ``ProviderError`` so the
session falls back (``AVATAR__FALLBACK``). The adapter below is the one the plugin used to take
(``avatar_id``, ``api_url``, ``api_key``, ``conn_options``; ``start`` like Tavus), so it works
again as soon as a plugin release revives the service.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.agents import NOT_GIVEN, APIConnectOptions
from livekit.plugins import hedra

from config.catalog import HedraOptions as HedraSettings
from live.providers.registry import ProviderContext, ProviderError, missing_key, register
from live.providers.tavus import HostedAvatar, LiveKitCredentials


@dataclass(frozen=True)
class HedraOptions:
    """What the plugin is built from; ``api_key`` may be missing until the service returns."""

    api_key: str | None
    avatar_id: str
    api_url: str | None
    fallback: str
    connect_timeout: float = 10.0
    start_timeout: float = 20.0

    @classmethod
    def from_settings(cls, options: HedraSettings) -> HedraOptions:
        key = options.api_key.get_secret_value() if options.api_key else None
        return cls(
            api_key=key or None,
            avatar_id=options.avatar_id,
            api_url=options.base_url.rstrip("/") if options.base_url else None,
            fallback=options.fallback,
        )


def discontinued_message(fallback: str) -> str:
    then = "continuing without an avatar" if fallback == "none" else f"falling back to {fallback}"
    return f"Hedra's realtime avatar service is discontinued; {then}"


def build_avatar(opts: HedraOptions, livekit: LiveKitCredentials) -> HostedAvatar:
    """The plugin session wrapped like Tavus (one POST, bounded start, no secrets in errors)."""
    try:
        session = hedra.AvatarSession(
            avatar_id=opts.avatar_id or NOT_GIVEN,
            api_url=opts.api_url or NOT_GIVEN,
            api_key=opts.api_key or NOT_GIVEN,
            conn_options=APIConnectOptions(max_retry=0, timeout=opts.connect_timeout),
        )
    except hedra.HedraException:
        raise ProviderError(discontinued_message(opts.fallback)) from None
    except (ValueError, TypeError) as err:
        if not opts.api_key:
            raise ProviderError(missing_key("avatar", "hedra")) from None
        raise ProviderError(f"avatar provider 'hedra': {type(err).__name__}") from None
    return HostedAvatar(
        session,
        provider="hedra",
        livekit=livekit,
        start_timeout=opts.start_timeout,
        secrets=(opts.api_key or "",),
    )


@register("avatar", "hedra")
def create_hedra_avatar(options: HedraSettings, ctx: ProviderContext) -> HostedAvatar:
    """Hedra avatar (``avatar_id``); raises ``ProviderError`` while the vendor is offline."""
    return build_avatar(
        HedraOptions.from_settings(options), LiveKitCredentials.from_settings(ctx.settings.livekit)
    )
