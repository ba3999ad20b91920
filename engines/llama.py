"""Language model: llama.cpp's server core (xllamacpp) in-process."""

from __future__ import annotations

import importlib.util
import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.catalog import LLM_MODELS
from config.settings import Settings
from engines import EngineError
from engines.executors import CPU_THREADS, SerialExecutor
from engines.model_paths import smollm2_path
from engines.store import ModelStore
from engines.threads import named_threads


@dataclass(frozen=True)
class LlamaOptions:
    """How one use runs the model. Uses with different options get engines of their own
    (``use`` names it in the store); the live agent's are :func:`agent_options`."""

    use: str = "agent"
    parallel: int = 1  # slots: requests served at once
    ctx_per_slot: int = 2048
    threads: int = CPU_THREADS
    batch_threads: int = 0  # threads that evaluate a prompt; 0: ``threads``
    # llama.cpp's host-RAM prompt cache across requests (its default: 8 GiB); 0 turns it off
    cache_ram_mib: int = 32
    cache_idle_slots: bool = True  # an idle slot's KV state moves to that cache (default)
    batch: int = 512  # prompt tokens per step; the compute buffers grow with it
    # llama.cpp's cache reuse: runs of at least this many cached tokens that the new prompt
    # holds further on are moved into place (KV shift) instead of evaluated again; 0: off
    cache_reuse: int = 0
    weights: str = "q4_1"  # SmolLM2's quantization (engines.model_paths.SMOLLM2_WEIGHTS)


def turn_options(weights: str = "q4_1") -> LlamaOptions:
    """The end-of-turn scorer's: one short prompt at a time on one thread, no prompt cache
    (its slot keeps the shared prompt head), beside the agent's engine so a reply never waits.
    On the agent's weights (``llm.weights``) the two engines map one file; Q8_0 gives the
    corpus's 267 pauses Q4_1's verdicts at the default threshold, 21% faster on average
    (bench/results/turns-scorer-weights.md)."""
    return LlamaOptions(use="turn", parallel=1, ctx_per_slot=256, threads=1, cache_ram_mib=0,
                        cache_idle_slots=False, batch=64, weights=weights)


def agent_options(settings: Settings) -> LlamaOptions:
    """The live agent's: one slot per session (up to 4), a small prompt cache for the persona
    prefix the sessions share, ``llm.threads`` threads (one by default: see that setting).
    Cache reuse: once a call outgrows the slot, the prompt drops its oldest turns and the
    rest moves up; shifted into place, it is not read again (without it, every turn from
    about the 25th evaluated ~1,500 tokens, 13 to 18 s: bench/results/llm-turns-long.md)."""
    return LlamaOptions(parallel=max(1, min(4, settings.limits.max_concurrent_sessions)),
                        threads=settings.llm.threads, weights=settings.llm.weights,
                        cache_reuse=16)


def llama_params(path: Path, options: LlamaOptions) -> Any:
    """llama.cpp's server parameters (``xllamacpp.CommonParams``) for one use.

    The library also starts its HTTP front-end; it binds 127.0.0.1 on a random port and gets
    a random API key nobody knows, so only in-process calls reach the model.
    """
    import xllamacpp

    p = xllamacpp.CommonParams()
    p.model.path = str(path)
    p.n_parallel = options.parallel
    p.n_ctx = options.ctx_per_slot * options.parallel
    p.n_batch = options.batch
    p.n_ubatch = options.batch
    p.cpuparams.n_threads = options.threads
    p.cpuparams_batch.n_threads = options.batch_threads or options.threads
    # its threads sleep rather than poll between graph runs: Piper voices the reply's first
    # phrase on the same cores while the model writes on (side by side, a reply with Piper
    # speaking alongside: 0.47 to 0.51 s instead of 0.56 to 0.59 s)
    p.cpuparams.poll = 0
    p.cpuparams_batch.poll = 0
    p.cache_prompt = True
    p.cache_ram_mib = options.cache_ram_mib
    p.cache_idle_slots = options.cache_idle_slots
    p.n_cache_reuse = options.cache_reuse
    p.n_threads_http = 1
    p.api_keys = [secrets.token_urlsafe(24)]
    p.verbosity = -1
    p.endpoint_metrics = False
    return p


class LlamaEngine:
    """llama.cpp's server core (xllamacpp) in-process: streaming, slots, prompt cache."""

    def __init__(self, model: str, path: Path, options: LlamaOptions) -> None:
        import xllamacpp

        self.model_name = model
        self.options = options
        self.parallel = options.parallel
        self.ctx_per_slot = options.ctx_per_slot
        with named_threads(f"llama-{options.use}"):  # its server loop, where the model runs
            self._server = xllamacpp.Server(llama_params(path, options))
        self.executor = SerialExecutor(f"llama-{model}", workers=options.parallel)

    def chat_stream_sync(
        self, request: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]
    ) -> None:
        """Blocking streaming chat completion; ``on_chunk`` returns True to stop generation."""
        self._server.handle_chat_completions(dict(request, stream=True), on_chunk)

    def chat_sync(self, request: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self._server.handle_chat_completions(dict(request, stream=False))
        return out

    def next_token_probs_sync(self, prompt: str, top: int = 40) -> dict[str, float]:
        """The ``top`` likeliest next tokens after a raw ``prompt`` and their probabilities."""
        out = self._server.handle_completions(
            {"prompt": prompt, "n_predict": 1, "n_probs": top, "temperature": 0.0,
             "cache_prompt": True}
        )
        try:
            tops = out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"llama.cpp returned no token probabilities: {str(out)[:200]}") from exc
        probs: dict[str, float] = {}
        for t in tops:
            probs[t["token"]] = probs.get(t["token"], 0.0) + math.exp(t["logprob"])
        return probs

    def read_ahead_sync(self, messages: Sequence[dict[str, str]]) -> bool:
        """Evaluate a conversation into the prompt cache (one token generated, dropped): the
        next request that begins with it evaluates only what follows."""
        out = self.chat_sync({"messages": list(messages), "max_tokens": 1, "cache_prompt": True})
        return "choices" in out

    def warm_prefix(self, system: str, examples: Sequence[dict[str, str]] = ()) -> bool:
        """Evaluate the persona prompt (and its example turns) once so the first turn reuses
        its KV cache."""
        return self.read_ahead_sync(
            [{"role": "system", "content": system}, *examples, {"role": "user", "content": "Hi"}])


def llama_available() -> bool:
    """Whether the local LLM can load here (weights and xllamacpp installed), without loading."""
    try:
        smollm2_path()
    except (ModuleNotFoundError, EngineError):
        return False
    return importlib.util.find_spec("xllamacpp") is not None


def load_llama(model: str, options: LlamaOptions) -> LlamaEngine:
    if model not in LLM_MODELS:
        raise EngineError(f"unknown local LLM {model!r}; choose one of: {', '.join(LLM_MODELS)}")
    return LlamaEngine(model, smollm2_path(options.weights), options)


def get_llama(store: ModelStore, model: str, options: LlamaOptions | None = None) -> LlamaEngine:
    """The model, once per process and use; ``options`` (default: the live agent's) apply
    when this call loads it. Another use (the summariser's) gets its own engine beside."""
    opts = options or agent_options(store.settings)
    key = f"local.llm.{model}" + ("" if opts.use == "agent" else f".{opts.use}")
    return store.cached(key, lambda: load_llama(model, opts))
