"""Language model: llama.cpp's server core (xllamacpp) in-process."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from config.catalog import LLM_MODELS
from live.providers.local.executors import CPU_THREADS, SerialExecutor
from live.providers.local.model_paths import smollm2_path
from live.providers.registry import ProviderContext, ProviderError


class LlamaEngine:
    """llama.cpp's server core (xllamacpp) in-process: streaming, slots, prompt cache.

    The library also starts its HTTP front-end; it binds 127.0.0.1 on a random port and we
    give it a random API key nobody knows, so only in-process calls reach the model.
    """

    def __init__(self, model: str, path: Path, *, parallel: int, ctx_per_slot: int) -> None:
        import xllamacpp

        self.model_name = model
        self.parallel = parallel
        self.ctx_per_slot = ctx_per_slot
        p = xllamacpp.CommonParams()
        p.model.path = str(path)
        p.n_parallel = parallel
        p.n_ctx = ctx_per_slot * parallel
        p.n_batch = 512
        p.n_ubatch = 512
        p.cpuparams.n_threads = CPU_THREADS
        p.cpuparams_batch.n_threads = CPU_THREADS
        p.cache_prompt = True
        p.cache_ram_mib = 32  # bounded host-RAM prompt cache (default 8 GiB)
        p.n_threads_http = 1
        p.api_keys = [secrets.token_urlsafe(24)]
        p.verbosity = -1
        p.endpoint_metrics = False
        self._server = xllamacpp.Server(p)
        self.executor = SerialExecutor(f"llama-{model}", workers=parallel)

    def chat_stream_sync(
        self, request: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]
    ) -> None:
        """Blocking streaming chat completion; ``on_chunk`` returns True to stop generation."""
        self._server.handle_chat_completions(dict(request, stream=True), on_chunk)

    def chat_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._server.handle_chat_completions(dict(request, stream=False))
        return out

    def warm_prefix(self, system: str, examples: Sequence[dict[str, str]] = ()) -> bool:
        """Evaluate the persona prompt (and its example turns) once so the first turn reuses
        its KV cache."""
        out = self.chat_sync(
            {
                "messages": [
                    {"role": "system", "content": system},
                    *examples,
                    {"role": "user", "content": "Hi"},
                ],
                "max_tokens": 1,
                "cache_prompt": True,
            }
        )
        return "choices" in out


def load_llama(model: str, *, parallel: int) -> LlamaEngine:
    if model not in LLM_MODELS:
        raise ProviderError(f"unknown local LLM {model!r}; choose one of: {', '.join(LLM_MODELS)}")
    return LlamaEngine(model, smollm2_path(), parallel=parallel, ctx_per_slot=2048)


def get_llama(ctx: ProviderContext, model: str, *, parallel: int | None = None) -> LlamaEngine:
    """The model, once per process; ``parallel`` slots (default: one per session, up to 4)
    apply when this call loads it."""
    if parallel is None:
        parallel = max(1, min(4, ctx.settings.limits.max_concurrent_sessions))
    return ctx.cached(f"local.llm.{model}", lambda: load_llama(model, parallel=parallel))
