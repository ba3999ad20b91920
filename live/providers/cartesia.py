"""Cartesia streaming TTS (websocket ``/tts/websocket``) through livekit-plugins-cartesia.

The key comes from the slot (``TTS__API_KEY``) or ``CARTESIA_API_KEY`` and is passed to the
plugin explicitly. ``TTS__BASE_URL`` (http(s)://; the plugin derives ws(s)://) points it at
another endpoint or a test fake. Audio is 24 kHz mono PCM, which LiveKit resamples as needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.plugins import cartesia
from livekit.plugins.cartesia.models import TTSDefaultVoiceId

from config.catalog import CartesiaOptions as CartesiaSettings
from live.providers.registry import ProviderContext, ProviderError, missing_key, register

DEFAULT_BASE_URL = "https://api.cartesia.ai"
DEFAULT_MODEL = "sonic-3"
LOCAL_DEFAULT_VOICE = "joe-us"  # TTSSettings.voice's default: a local Piper voice
SAMPLE_RATE = 24000


@dataclass(frozen=True)
class CartesiaOptions:
    """What the plugin is built from; frozen so a running session never sees it change."""

    api_key: str
    model: str
    voice: str
    base_url: str
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def from_settings(cls, options: CartesiaSettings) -> CartesiaOptions:
        key = options.api_key.get_secret_value() if options.api_key else None
        if not key:
            raise ProviderError(missing_key("tts", "cartesia"))
        voice = options.voice
        if voice in ("", LOCAL_DEFAULT_VOICE):
            voice = TTSDefaultVoiceId  # only the provider was switched: Cartesia's stock voice
        base_url = (options.base_url or DEFAULT_BASE_URL).rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise ProviderError(
                "tts provider 'cartesia': TTS__BASE_URL must be an http:// or https:// URL"
            )
        return cls(
            api_key=key,
            model=options.model or DEFAULT_MODEL,
            voice=voice,
            base_url=base_url,
        )


def build_tts(opts: CartesiaOptions) -> cartesia.TTS:
    """The LiveKit TTS; streaming over one pooled websocket per process."""
    return cartesia.TTS(
        api_key=opts.api_key,
        model=opts.model,
        voice=opts.voice,
        base_url=opts.base_url,
        sample_rate=opts.sample_rate,
    )


@register("tts", "cartesia")
def create_cartesia_tts(options: CartesiaSettings, ctx: ProviderContext) -> cartesia.TTS:
    """Streaming TTS from the ``tts`` settings group."""
    return build_tts(CartesiaOptions.from_settings(options))
