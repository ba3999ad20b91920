"""OpenAI (or any OpenAI-compatible server) chat completions through livekit-plugins-openai.

``LLM__BASE_URL`` turns this into a client of any server speaking the chat completions API with
streaming and ``stream_options.include_usage``: llama.cpp's ``llama-server``, Ollama, vLLM.
For example, against a local llama.cpp server::

    llama-server -m model.gguf --host 127.0.0.1 --port 8080
    LLM__PROVIDER=openai LLM__BASE_URL=http://127.0.0.1:8080/v1 LLM__MODEL=model avatar up

Such servers usually ignore the key, so with a base URL and no key a placeholder is sent.
Without a base URL (api.openai.com) ``LLM__API_KEY`` or ``OPENAI_API_KEY`` is required.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx2 as httpx
from livekit.plugins import openai

from config.catalog import OpenAIOptions as OpenAISettings
from live.providers.registry import ProviderContext, ProviderError, missing_key, register

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
LOCAL_DEFAULT_MODEL = "smollm2-135m"  # LLMSettings.model's default: the local provider's
PLACEHOLDER_KEY = "no-key"  # sent to OpenAI-compatible servers that need none


@dataclass(frozen=True)
class OpenAIOptions:
    """What the plugin is built from; frozen so a running session never sees it change."""

    api_key: str
    model: str
    base_url: str | None
    temperature: float
    max_tokens: int
    connect_timeout: float = 10.0
    read_timeout: float = 10.0

    @classmethod
    def from_settings(cls, options: OpenAISettings) -> OpenAIOptions:
        key = options.api_key.get_secret_value() if options.api_key else None
        if not key:
            if not options.base_url:
                raise ProviderError(missing_key("llm", "openai"))
            key = PLACEHOLDER_KEY
        model = options.model
        if not options.base_url and model in ("", LOCAL_DEFAULT_MODEL):
            model = DEFAULT_MODEL  # only the provider was switched: use a real OpenAI model
        return cls(
            api_key=key,
            model=model,
            base_url=options.base_url.rstrip("/") if options.base_url else None,
            temperature=options.temperature,
            max_tokens=options.max_tokens,
        )


def build_llm(opts: OpenAIOptions) -> openai.LLM:
    """The LiveKit LLM; retries stay with LiveKit (``max_retries=0`` in the client).

    OpenAI-compatible servers get the classic ``max_tokens`` (llama.cpp and Ollama may not know
    ``max_completion_tokens``); api.openai.com gets ``max_completion_tokens``.
    """
    timeout = httpx.Timeout(
        connect=opts.connect_timeout, read=opts.read_timeout, write=5.0, pool=5.0
    )
    if opts.base_url:
        return openai.LLM(
            api_key=opts.api_key,
            base_url=opts.base_url,
            model=opts.model,
            temperature=opts.temperature,
            extra_body={"max_tokens": opts.max_tokens},
            max_retries=0,
            timeout=timeout,
        )
    return openai.LLM(
        api_key=opts.api_key,
        model=opts.model,
        temperature=opts.temperature,
        max_completion_tokens=opts.max_tokens,
        max_retries=0,
        timeout=timeout,
    )


@register("llm", "openai")
def create_openai_llm(options: OpenAISettings, ctx: ProviderContext) -> openai.LLM:
    """Chat completions LLM from the ``llm`` settings group."""
    opts = OpenAIOptions.from_settings(options)
    logger.debug(
        "openai llm", extra={"model": opts.model, "custom_base_url": opts.base_url is not None}
    )
    return build_llm(opts)
