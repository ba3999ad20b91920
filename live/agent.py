"""The agent: persona from the session's spec; spoken-style output for a talking face.

Every answer passes through :meth:`AvatarAgent.llm_node`, whatever the LLM: the operator's
knowledge relevant to the caller's last words is put before them (retrieved locally, see
``live.knowledge``), and the streamed answer goes through a :class:`PersonaGuard`, so a reply
that gives another name than the persona's is corrected before it is spoken.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from livekit.agents import Agent, ModelSettings, llm

from live.knowledge import KnowledgeBase, knowledge_message
from live.persona import PersonaGuard, persona_from_instructions

logger = logging.getLogger(__name__)


def with_knowledge(chat_ctx: llm.ChatContext, knowledge: KnowledgeBase) -> llm.ChatContext:
    """A copy of ``chat_ctx`` with the best passages for each user message placed just before
    it (as a system note); unchanged when nothing matches.

    Every question keeps the passages it was answered from, not only the last: the request
    of the next turn then starts with the whole of this one, which a prompt cache (llama.cpp's,
    a hosted model's) does not compute again.
    """
    items = chat_ctx.items
    notes: list[tuple[int, llm.ChatMessage]] = []
    for i, item in enumerate(items):
        if getattr(item, "role", None) != "user":
            continue
        hits = knowledge.search(item.text_content or "")  # type: ignore[union-attr]
        if hits:
            notes.append((i, llm.ChatMessage(role="system", content=[knowledge_message(hits)])))
    if not notes:
        return chat_ctx
    ctx = chat_ctx.copy()
    for i, note in reversed(notes):
        ctx.items.insert(i, note)
    return ctx


async def _marking_first(stream: AsyncIterable[Any], mark: str) -> AsyncIterator[Any]:
    first = True
    async for chunk in stream:
        if first:
            first = False
            logger.debug(mark)
        yield chunk


class AvatarAgent(Agent):
    """A voice agent shown as a face. Tools can be added here as `@function_tool` methods."""

    def __init__(
        self,
        *,
        instructions: str,
        knowledge: str | None = None,
        guard: bool = True,
        chat_ctx: llm.ChatContext | None = None,
    ) -> None:
        # chat_ctx: the conversation so far, when a session resumes on a new job
        super().__init__(instructions=instructions, chat_ctx=chat_ctx)
        self.persona = persona_from_instructions(instructions)
        self.knowledge = KnowledgeBase(knowledge) if knowledge and knowledge.strip() else None
        self.guard = guard
        self.corrections = 0  # identity claims the guard replaced in this session

    def prompt_context(self, chat_ctx: llm.ChatContext) -> llm.ChatContext:
        """The conversation as the LLM reads it (the operator's knowledge placed in it): what
        a reply's request holds, and what the model may read ahead between turns."""
        if self.knowledge is None:
            return chat_ctx
        return with_knowledge(chat_ctx, self.knowledge)

    async def llm_node(  # type: ignore[override]
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[llm.ChatChunk | str | Any]:
        logger.debug("reply LLM started")  # marks for latency traces (bench.turns.trace)
        chat_ctx = self.prompt_context(chat_ctx)
        stream: AsyncIterable[Any] = _marking_first(
            Agent.default.llm_node(self, chat_ctx, tools, model_settings), "reply LLM first text"
        )
        if not self.guard:
            async for chunk in stream:
                yield chunk
            return
        guard = PersonaGuard(self.persona)
        try:
            async for chunk in stream:
                if isinstance(chunk, str):
                    if text := guard.feed(chunk):
                        yield text
                elif isinstance(chunk, llm.ChatChunk) and chunk.delta and chunk.delta.content:
                    text = guard.feed(chunk.delta.content)
                    if text or chunk.delta.tool_calls:
                        delta = chunk.delta.model_copy(update={"content": text or None})
                        yield chunk.model_copy(update={"delta": delta})
                else:
                    yield chunk
            if tail := guard.flush():
                yield tail
        finally:
            if guard.replaced:
                self.corrections += guard.replaced
                logger.info("persona guard corrected the answer", extra={"n": guard.replaced})
