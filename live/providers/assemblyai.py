"""AssemblyAI streaming STT (v3 universal streaming websocket) through livekit-plugins-assemblyai.

The key comes from the slot (``STT__API_KEY``) or ``ASSEMBLYAI_API_KEY`` and is passed to the
plugin explicitly, so a fallback slot or a per-session override never silently reads another
environment. ``STT__BASE_URL`` points the plugin elsewhere (the EU endpoint, or a test fake).

The plugin (1.8.9) lets a refused websocket handshake escape as aiohttp's
``WSServerHandshakeError``, whose ``repr`` carries the request headers, including
``Authorization: <key>``; it is also not an ``APIError``, so LiveKit never retries it. Our
connect guard (through ``live.lk_compat``) turns connect failures into ``APIStatusError``/``APIConnectionError`` raised
without context, the way the Cartesia plugin already does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import aiohttp
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    NotGivenOr,
)
from livekit.plugins import assemblyai
from livekit.plugins.assemblyai.stt import SpeechStream

from config.catalog import AssemblyAIOptions as AssemblyAISettings
from live.lk_compat import assemblyai_guarded_stream
from live.providers.registry import ProviderContext, ProviderError, missing_key, register

DEFAULT_BASE_URL = "wss://streaming.assemblyai.com"
DEFAULT_MODEL = "universal-streaming-english"

AssemblyAIModel = Literal[
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "u3-rt-pro",
    "u3-rt-pro-beta-1",
    "universal-3-5-pro",
    "universal-3-6-pro",
]
_U3_PRO = ("u3-rt-pro", "u3-rt-pro-beta-1", "universal-3-5-pro", "universal-3-6-pro")
# Names our settings accept that are not AssemblyAI's: the local defaults (when the slot only
# switched provider) and the marketing name from the docs.
_ALIASES = {"": DEFAULT_MODEL, "tiny.en": DEFAULT_MODEL, "base": DEFAULT_MODEL}


@dataclass(frozen=True)
class AssemblyAIOptions:
    """What the plugin is built from; frozen so a running session never sees it change."""

    api_key: str
    model: AssemblyAIModel
    base_url: str
    language: str
    sample_rate: int = 16000

    @classmethod
    def from_settings(cls, options: AssemblyAISettings) -> AssemblyAIOptions:
        key = options.api_key.get_secret_value() if options.api_key else None
        if not key:
            raise ProviderError(missing_key("stt", "assemblyai"))
        return cls(
            api_key=key,
            model=_model(options.model, options.language),
            base_url=(options.base_url or DEFAULT_BASE_URL).rstrip("/"),
            language=options.language,
        )


def _model(name: str, language: str) -> AssemblyAIModel:
    if name == "universal-streaming":
        multi = not language.lower().startswith("en")
        return "universal-streaming-multilingual" if multi else "universal-streaming-english"
    name = _ALIASES.get(name, name)
    if name not in get_args(AssemblyAIModel):
        raise ProviderError(
            f"stt provider 'assemblyai': unknown model {name!r} (STT__MODEL); choose one of: "
            + ", ".join(get_args(AssemblyAIModel))
        )
    return cast(AssemblyAIModel, name)


async def _guard_connect(
    connect: Callable[[], Awaitable[aiohttp.ClientWebSocketResponse]],
) -> aiohttp.ClientWebSocketResponse:
    """The plugin's websocket connect, with failures as credential-free LiveKit API errors."""
    failure: APIError
    try:
        return await connect()
    except aiohttp.WSServerHandshakeError as err:
        failure = APIStatusError(
            "AssemblyAI refused the streaming connection", status_code=err.status, body=None
        )
    except TimeoutError:
        failure = APITimeoutError("AssemblyAI connect timed out")
    except (aiohttp.ClientError, OSError) as err:
        # transport errors can contain credentials in URLs or headers: keep only the type
        failure = APIConnectionError(f"AssemblyAI unreachable ({type(err).__name__})")
    raise failure  # outside the except blocks: no __context__ with the request headers


class AssemblyAISTT(assemblyai.STT):
    """``assemblyai.STT`` whose streams guard their connect (see the module docstring)."""

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> SpeechStream:
        return assemblyai_guarded_stream(
            self, conn_options=conn_options, connect_guard=_guard_connect
        )


def build_stt(opts: AssemblyAIOptions) -> AssemblyAISTT:
    """The LiveKit STT; language steering only exists on the Universal-3 Pro models."""
    kwargs: dict[str, Any] = {}
    if opts.model in _U3_PRO and opts.language:
        kwargs["language_codes"] = [opts.language]
    return AssemblyAISTT(
        api_key=opts.api_key,
        model=opts.model,
        base_url=opts.base_url,
        sample_rate=opts.sample_rate,
        **kwargs,
    )


@register("stt", "assemblyai")
def create_assemblyai_stt(options: AssemblyAISettings, ctx: ProviderContext) -> AssemblyAISTT:
    """Streaming STT; the plugin retries per the session's ``conn_options``."""
    return build_stt(AssemblyAIOptions.from_settings(options))
