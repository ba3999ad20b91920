"""Local language model: SmolLM2-135M-Instruct on llama.cpp (xllamacpp) as a LiveKit ``llm.LLM``.

Tokens stream from llama.cpp's server core (in-process, no HTTP) into ``ChatChunk``s. The
prompt cache (``cache_prompt``) keeps each slot's KV cache, so a new turn only evaluates the
tokens added since the last one. A 135M model needs steering: the persona rules in
``local.prompt.PERSONA_RULES`` ask for one or two spoken sentences, generation stops after
``max_sentences`` sentences (2 by default: the model ignores the rule now and then), and when
``max_tokens`` cuts an answer the unfinished last sentence is dropped. Tool calls are not supported by this
model: tools are ignored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import threading
from dataclasses import dataclass, replace
from typing import Any, Literal

from livekit.agents import APIConnectionError, APIStatusError, llm, utils
from livekit.agents.llm import ChatContext, Tool, ToolChoice
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.voice.transcription.filters import EMOJI_PATTERN

from config.catalog import LLM_MODELS
from config.settings import LLMSettings
from engines.llama import LlamaEngine, get_llama
from live.knowledge import FACTS_PREFIX, KnowledgeBase
from live.providers.local.prompt import (
    grounded_answer,
    persona_examples,
    persona_facts,
    system_prompt,
    with_facts,
)
from live.providers.registry import ProviderContext, register

logger = logging.getLogger(__name__)

_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)")
_MARKDOWN = str.maketrans("", "", "*#`")


def spoken_text(piece: str) -> str:
    """A streamed piece without markdown marks or emojis: a tiny model ignores the persona's
    "no markdown, no emojis" now and then, and the text is both spoken and kept as transcript."""
    return EMOJI_PATTERN.sub("", piece.translate(_MARKDOWN))
_CHARS_PER_TOKEN = 3  # conservative for English, to keep the history inside the context


@dataclass(frozen=True)
class _LLMOptions:
    temperature: float
    max_tokens: int
    repeat_penalty: float
    persona: bool
    max_sentences: int | None
    steer: Steering
    top_k: int
    min_p: float


Steering = Literal["off", "examples", "facts", "grounded"]
"""How much the prompt is shaped for a tiny model (each level adds to the previous one):
``examples``: in-character prior turns after the system message; ``facts``: the persona's
facts and the retrieved knowledge that match the caller's words placed with them, in the last
user message; ``grounded``: a retrieved fact, the persona's introduction or a refusal that
clearly answers the question is the answer, verbatim (see ``local.prompt.grounded_answer``)."""

_PERSONA_FIRST = re.compile(r"(?i)\b(?:your name|who are you|who am i|call you|yourself|are you)\b")


@functools.lru_cache(maxsize=64)
def _persona_kb(instructions: str) -> KnowledgeBase:
    """The persona's own facts, searchable like the operator's knowledge."""
    return KnowledgeBase("\n\n".join(persona_facts(instructions)))


@dataclass
class _Prompt:
    instructions: str
    turns: list[dict[str, str]]
    notes: list[str]  # retrieved passages put just before the last user message
    # each user turn's own retrieved passages, by its index in ``turns``
    turn_notes: dict[int, list[str]]


def _parse(chat_ctx: ChatContext) -> _Prompt:
    leading: list[str] = []
    turns: list[dict[str, str]] = []
    turn_notes: dict[int, list[str]] = {}
    pending: list[str] = []
    for item in chat_ctx.items:
        if item.type != "message":
            continue
        text = (item.text_content or "").strip()
        if not text:
            continue
        if item.role in ("system", "developer") and text.startswith(FACTS_PREFIX):
            lines = text.removeprefix(FACTS_PREFIX).split("\n")
            pending += [line for line in lines if line.strip()]
            continue
        if item.role in ("system", "developer"):
            if not turns:
                leading.append(text)
            else:
                turns.append({"role": "system", "content": text})
        else:
            if item.role == "user" and pending:
                turn_notes[len(turns)] = pending
            turns.append({"role": item.role, "content": text})
        pending = []  # notes belong to the user turn right after them, or to none
    last = len(turns) - 1
    notes = turn_notes.get(last, []) if turns and turns[-1]["role"] == "user" else []
    return _Prompt("\n".join(leading), turns, notes, turn_notes)


def to_messages(
    chat_ctx: ChatContext, *, persona: bool, max_chars: int, steer: Steering = "off"
) -> list[dict[str, str]]:
    """ChatContext -> OpenAI-style messages for llama.cpp's chat template.

    Leading system/developer items become one system message (plus the persona rules), so the
    prompt prefix stays identical from turn to turn and the KV cache is reused. Tool calls and
    their outputs are dropped (the model cannot use them). The oldest turns are dropped when
    the history would not fit the slot's context. ``steer`` shapes the prompt for a tiny
    model (see :data:`Steering`); only the last user message changes between turns, so the
    cached prefix still covers the rest.
    """
    p = _parse(chat_ctx)
    turns = p.turns
    system = system_prompt(p.instructions) if persona else p.instructions
    examples: list[dict[str, str]] = []
    if persona and steer != "off" and p.instructions:
        examples = persona_examples(p.instructions)
    # Every user turn reads as it did when it was the last one, with the facts it was asked
    # with: the prompt of the next turn is then this one plus the reply and the new question,
    # and llama.cpp's prompt cache covers all of it but those (stripping the facts from the
    # turn before made the model read it, the reply and the new question again: 40 to 60
    # tokens, 0.3 to 0.5 s on one thread, instead of about 16).
    for i, turn in enumerate(turns):
        if turn["role"] == "user":
            question = turn["content"]
            facts = _persona_facts(question, p.instructions) if (
                persona and steer in ("facts", "grounded") and p.instructions) else []
            turns[i] = {"role": "user",
                        "content": with_facts(question, [*facts, *p.turn_notes.get(i, [])])}
    budget = max_chars - len(system) - sum(len(t["content"]) for t in examples)
    while len(turns) > 1 and sum(len(t["content"]) for t in turns) > budget:
        turns.pop(0)
    return ([{"role": "system", "content": system}] if system else []) + examples + turns


def _persona_facts(question: str, instructions: str) -> list[str]:
    """The persona's facts a question is asked with (the same every time it is asked)."""
    kb = _persona_kb(instructions)
    facts = [h.passage for h in kb.search(question, k=1)]
    if _PERSONA_FIRST.search(question) and kb.passages and kb.passages[0] not in facts:
        facts.insert(0, kb.passages[0])  # "I am Ava, the ...": who the persona is
    return facts


def planned_answer(chat_ctx: ChatContext, *, persona: bool, steer: Steering) -> str | None:
    """The verbatim answer for the last user message when ``steer`` is ``grounded``."""
    if not persona or steer != "grounded":
        return None
    p = _parse(chat_ctx)
    if not p.turns or p.turns[-1]["role"] != "user":
        return None
    return grounded_answer(p.turns[-1]["content"], p.instructions, p.notes)


class LocalLLM(llm.LLM):
    """SmolLM2 (or another gguf chat model) through xllamacpp, streamed token by token."""

    def __init__(
        self,
        *,
        engine: LlamaEngine,
        temperature: float = 0.6,
        max_tokens: int = 96,
        repeat_penalty: float = 1.1,
        persona: bool = True,
        max_sentences: int | None = 2,
        steer: Steering = "grounded",
        top_k: int = 40,
        min_p: float = 0.1,
    ) -> None:
        super().__init__()
        self._engine = engine
        self._opts = _LLMOptions(
            temperature=temperature,
            max_tokens=max_tokens,
            repeat_penalty=repeat_penalty,
            persona=persona,
            max_sentences=max_sentences,
            steer=steer,
            top_k=top_k,
            min_p=min_p,
        )
        self._warned_tools = False
        self._reading: asyncio.Task[bool] | None = None  # the last read-ahead

    @property
    def model(self) -> str:
        return self._engine.model_name

    @property
    def provider(self) -> str:
        return "local"

    def update_options(
        self,
        *,
        temperature: NotGivenOr[float] = NOT_GIVEN,
        max_tokens: NotGivenOr[int] = NOT_GIVEN,
    ) -> None:
        if isinstance(temperature, (int, float)):
            self._opts = replace(self._opts, temperature=float(temperature))
        if isinstance(max_tokens, int):
            self._opts = replace(self._opts, max_tokens=max_tokens)

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> LocalLLMStream:
        if tools and not self._warned_tools:
            self._warned_tools = True
            logger.info(
                "the local LLM cannot call tools; ignoring them", extra={"tools": len(tools)}
            )
        opts = self._opts
        if isinstance(extra_kwargs, dict):
            if isinstance(extra_kwargs.get("temperature"), (int, float)):
                opts = replace(opts, temperature=float(extra_kwargs["temperature"]))
            limit = extra_kwargs.get("max_tokens", extra_kwargs.get("max_completion_tokens"))
            if isinstance(limit, int):
                opts = replace(opts, max_tokens=limit)
        return LocalLLMStream(
            self,
            engine=self._engine,
            opts=opts,
            chat_ctx=chat_ctx,
            tools=tools or [],
            conn_options=conn_options,
        )

    def read_ahead(self, chat_ctx: ChatContext) -> asyncio.Task[bool]:
        """Read the conversation so far, and the head of the caller's next message, into the
        prompt cache while nobody waits on the model (call it when a reply has been stored).

        The next turn's prompt is this one plus the caller's words: its first token then waits
        only for those. Without it, that turn also evaluated what the cache lacked: the end of
        the stored reply (its text is what was played and forwarded, not always the tokens
        generated) and the template between them, 5 to 20 tokens at 10 ms each on one thread.
        """
        messages = _request(self._opts, self._engine, chat_ctx)["messages"]
        # an empty user message: its template head is what every next prompt holds; what
        # follows it (its end and the assistant's head, 5 tokens) is overwritten then
        return self._read([*messages, {"role": "user", "content": ""}])

    def _read(self, messages: list[dict[str, str]]) -> asyncio.Task[bool]:
        async def read(before: asyncio.Task[bool] | None) -> bool:
            if before is not None and not before.done():
                await asyncio.wait([before])  # one after the other, in the same slot
            return await self._engine.executor.run(self._engine.read_ahead_sync, messages)

        task = asyncio.get_running_loop().create_task(read(self._reading))
        self._reading = task
        _READ_AHEAD.add(task)
        task.add_done_callback(_READ_AHEAD.discard)
        task.add_done_callback(_read_ahead_done)
        return task

    async def read_ahead_settled(self) -> None:
        """Return once no read-ahead runs. A request waits for it: beside it, it would take
        another slot, one without this conversation in its cache, and evaluate all of it again."""
        reading = self._reading
        if reading is not None and not reading.done():
            await asyncio.wait([reading])


_READ_AHEAD: set[asyncio.Task[bool]] = set()  # running read-aheads (a task needs a reference)


def _read_ahead_done(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("reading the conversation ahead failed", exc_info=task.exception())


def _request(opts: _LLMOptions, engine: LlamaEngine, chat_ctx: ChatContext) -> dict[str, Any]:
    """llama.cpp's chat request for a conversation (a read-ahead sends its messages too, so
    both render the same prompt)."""
    max_chars = (engine.ctx_per_slot - opts.max_tokens - 64) * _CHARS_PER_TOKEN
    return {
        "messages": to_messages(
            chat_ctx, persona=opts.persona, max_chars=max_chars, steer=opts.steer
        ),
        "max_tokens": opts.max_tokens,
        "temperature": opts.temperature,
        "repeat_penalty": opts.repeat_penalty,
        "top_k": opts.top_k,
        "min_p": opts.min_p,
        "cache_prompt": True,
        "stream_options": {"include_usage": True},
        "timings_per_token": True,  # usage is known even when we stop generation early
    }


class LocalLLMStream(llm.LLMStream):
    def __init__(
        self,
        llm_: LocalLLM,
        *,
        engine: LlamaEngine,
        opts: _LLMOptions,
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._local = llm_
        self._engine = engine
        self._opts = opts
        self.timings: dict[str, Any] | None = None
        """llama.cpp's timings of the last request (``prompt_n``, ``cache_n``, ...)."""
        self.finish_reason: str | None = None
        """llama.cpp's ``stop``/``length``, or ``sentences`` when we stopped at max_sentences."""
        self.read_ahead: asyncio.Task[bool] | None = None
        """After a verbatim answer: the model reading it into its prompt cache."""

    def _request(self) -> dict[str, Any]:
        return _request(self._opts, self._engine, self._chat_ctx)

    async def _run(self) -> None:
        answer = planned_answer(self._chat_ctx, persona=self._opts.persona, steer=self._opts.steer)
        if answer:
            # nothing to generate: the answer is a retrieved fact (no tokens, no usage)
            self.finish_reason = "grounded"
            self._event_ch.send_nowait(
                llm.ChatChunk(
                    id=utils.shortuuid("local_"),
                    delta=llm.ChoiceDelta(role="assistant", content=answer),
                )
            )
            self._read_ahead(answer)
            return
        await self._local.read_ahead_settled()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        stop = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:  # llama.cpp's thread
            if stop.is_set():
                return True  # stops generation: the stream was closed (interruption)
            try:
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except RuntimeError:  # event loop closed
                return True
            return False

        async def generate() -> None:
            try:
                await self._engine.executor.run(
                    self._engine.chat_stream_sync, self._request(), on_chunk
                )
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(generate(), name="LocalLLM.generate")
        try:
            await self._consume(queue, stop)
            await task
        finally:
            stop.set()
            if not task.done():
                # the worker thread notices `stop` at its next token and returns
                task.cancel()

    async def _consume(
        self, queue: asyncio.Queue[dict[str, Any] | None], stop: threading.Event
    ) -> None:
        max_tokens = self._opts.max_tokens
        max_sentences = self._opts.max_sentences
        soft_limit = max_tokens - max(8, max_tokens // 4)
        request_id = utils.shortuuid("local_")
        pieces = 0
        tokens = 0  # every token counts toward the limit, spoken or not (markup, emoji...)
        sentences = 0
        pending = ""  # text held back near the token limit until a sentence ends
        usage_sent = False

        def emit(text: str) -> bool:
            """Send text on; True once the answer has its ``max_sentences`` sentences."""
            nonlocal sentences
            complete = False
            if max_sentences:
                for m in _SENTENCE_END.finditer(text):
                    sentences += 1
                    if sentences >= max_sentences:
                        text, complete = text[: m.end()], True
                        break
            else:
                sentences += len(_SENTENCE_END.findall(text))
            if text:
                self._event_ch.send_nowait(
                    llm.ChatChunk(
                        id=request_id, delta=llm.ChoiceDelta(role="assistant", content=text)
                    )
                )
            return complete

        while (chunk := await queue.get()) is not None:
            if "error" in chunk or ("code" in chunk and "choices" not in chunk):
                err = chunk.get("error", chunk)
                message = (
                    err.get("message", "local LLM error") if isinstance(err, dict) else str(err)
                )
                code = err.get("code", 500) if isinstance(err, dict) else 500
                raise APIStatusError(
                    f"local LLM: {message}",
                    status_code=code if isinstance(code, int) else 500,
                    retryable=False,
                )
            request_id = chunk.get("id") or request_id
            if chunk.get("timings"):
                self.timings = chunk["timings"]
            complete = False
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                tokens += 1 if content else 0
                text = spoken_text(content or "")
                if text:
                    pieces += 1
                    if tokens < soft_limit and not pending:
                        complete = emit(text)
                    else:
                        pending += text
                        ends = list(_SENTENCE_END.finditer(pending))
                        if ends:
                            cut = ends[-1].end()
                            complete = emit(pending[:cut])
                            pending = pending[cut:]
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
            if usage := chunk.get("usage"):
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                self._send_usage(
                    request_id,
                    prompt=int(usage.get("prompt_tokens", 0)),
                    cached=int(cached or 0),
                    completion=int(usage.get("completion_tokens", 0)),
                )
                usage_sent = True
            if complete:
                # enough said: stop generating now (usage comes from the per-token timings)
                stop.set()
                self.finish_reason, pending = "sentences", ""
                break
        if pending.strip():
            if self.finish_reason == "length" and sentences > 0:
                logger.debug(
                    "dropped an unfinished sentence at max_tokens", extra={"id": request_id}
                )
            else:
                emit(pending)
        if self.timings:
            t = self.timings
            logger.debug("local LLM timings", extra={
                k: t.get(k) for k in ("prompt_n", "cache_n", "prompt_ms", "predicted_n",
                                      "predicted_ms")})
        if not usage_sent and self.timings:
            t = self.timings
            self._send_usage(
                request_id,
                prompt=int(t.get("prompt_n", 0)) + int(t.get("cache_n", 0)),
                cached=int(t.get("cache_n", 0)),
                completion=int(t.get("predicted_n", 0)),
            )
        if self.finish_reason is None and pieces == 0 and self.timings is None:
            raise APIConnectionError("local LLM returned nothing", retryable=False)

    def _read_ahead(self, answer: str) -> None:
        """A verbatim answer costs the model nothing, but the next turn's prompt begins with it
        and the model has not read it (50 to 70 prompt tokens, 0.3 to 0.6 s on one thread,
        after the caller's next question). It reads it now, while the answer is spoken."""
        messages = [*self._request()["messages"], {"role": "assistant", "content": answer}]
        self.read_ahead = self._local._read(messages)

    def _send_usage(self, request_id: str, *, prompt: int, cached: int, completion: int) -> None:
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                usage=llm.CompletionUsage(
                    completion_tokens=completion,
                    prompt_tokens=prompt,
                    prompt_cached_tokens=cached,
                    total_tokens=prompt + completion,
                ),
            )
        )


@register("llm", "local", extra="local")
def create_local_llm(options: LLMSettings, ctx: ProviderContext) -> Any:
    """SmolLM2-135M-Instruct (the only chat model that ships as a package)."""
    model = options.model if options.provider == "local" else LLM_MODELS[0]
    engine = get_llama(ctx, model)
    return LocalLLM(engine=engine, temperature=options.temperature, max_tokens=options.max_tokens)
