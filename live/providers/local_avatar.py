"""The embedded talking-face avatar: ("avatar", "local").

Renders a portrait pack on the CPU and publishes through LiveKit's avatar framework (see
``live.avatar``). ``AVATAR__AVATAR_ID`` may name a portrait pack folder (made with
``avatar portrait import PHOTO``); empty means the committed default pack.
``AVATAR__WIDTH/HEIGHT/FPS`` size the video. The mode is in-process unless the settings
carry ``local_mode = "participant"``.
"""

from __future__ import annotations

from pathlib import Path

from config.settings import AvatarSettings
from live.avatar.options import LocalAvatarOptions, Mode, portrait_pack
from live.avatar.portrait import PortraitError
from live.avatar.session import LocalAvatarSession
from live.providers.registry import ProviderContext, ProviderError, register


def local_avatar_options(options: AvatarSettings) -> LocalAvatarOptions:
    portrait = Path(options.avatar_id).expanduser() if options.avatar_id else None
    mode: Mode = getattr(options, "local_mode", "in-process")
    if mode not in ("in-process", "participant"):
        raise ProviderError(f"unknown local avatar mode {mode!r}")
    return LocalAvatarOptions(
        width=options.width, height=options.height, fps=options.fps, portrait=portrait,
        mode=mode, mouth_lead=options.mouth_lead_ms / 1000.0,
    )


def load_portrait(options: AvatarSettings, ctx: ProviderContext) -> LocalAvatarOptions:
    """Load (once per process) and check the portrait pack; prewarm calls this too."""
    opts = local_avatar_options(options)
    key = f"avatar.local.pack:{opts.portrait or ''}"
    try:
        ctx.cached(key, lambda: portrait_pack(opts))  # the renderers' copy, not a second one
    except PortraitError as exc:
        raise ProviderError(f"local avatar: {exc}") from None
    return opts


@register("avatar", "local")
def create_local_avatar(options: AvatarSettings, ctx: ProviderContext) -> LocalAvatarSession:
    """A ``LocalAvatarSession``; the portrait pack is checked (and cached) here."""
    opts = load_portrait(options, ctx)
    lk = ctx.settings.livekit
    return LocalAvatarSession(
        options=opts,
        livekit_url=lk.effective_url,
        api_key=lk.api_key.get_secret_value(),
        api_secret=lk.api_secret.get_secret_value(),
    )
