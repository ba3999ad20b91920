"""The local LLM (SmolLM2-135M on llama.cpp) streamed through LiveKit's LLM interface."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import pytest
from livekit.agents import Agent, AgentSession, function_tool
from livekit.agents.llm import ChatChunk, ChatContext

from config.session import DEFAULT_INSTRUCTIONS
from engines.llama import LlamaEngine
from live.providers.local_llm import LocalLLM, LocalLLMStream
from live.providers.registry import ProviderContext, create

pytestmark = pytest.mark.slow


def chat(*turns: str) -> ChatContext:
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content=DEFAULT_INSTRUCTIONS)
    for i, text in enumerate(turns):
        ctx.add_message(role="user" if i % 2 == 0 else "assistant", content=text)
    return ctx


async def collect(stream: LocalLLMStream) -> tuple[str, list[ChatChunk]]:
    chunks = [c async for c in stream]
    await stream.aclose()
    return "".join(c.delta.content or "" for c in chunks if c.delta), chunks


async def test_streams_a_short_spoken_answer_with_usage(llama: LlamaEngine) -> None:
    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=96, steer="facts")
    text, chunks = await collect(llm.chat(chat_ctx=chat("Hi! Who are you?")))
    content_chunks = [c for c in chunks if c.delta and c.delta.content]
    assert len(content_chunks) > 3  # streamed token by token, not in one piece
    assert text.strip()
    assert "Ava" in text  # follows the persona from the instructions
    assert not re.search(r"[*#`]|^\s*[-\d]+[.)] ", text, re.M)  # no markdown, no lists
    assert len(text.split()) <= 60
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert (
        usage.prompt_tokens > 20
        and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    )


async def test_who_it_is_is_answered_in_the_personas_words_without_generating(
    llama: LlamaEngine,
) -> None:
    llm = LocalLLM(engine=llama, temperature=0.6, max_tokens=96)
    stream = llm.chat(chat_ctx=chat("What is your name, and what can you help me with today?"))
    text, _ = await collect(stream)
    assert stream.finish_reason == "grounded" and stream.timings is None  # the model did not run
    assert text.startswith("I'm Ava, your friendly voice assistant.")


async def test_second_turn_only_evaluates_the_new_tokens(llama: LlamaEngine) -> None:
    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=40)
    first = llm.chat(chat_ctx=chat("Hello there, I am planning a trip to the seaside."))
    answer, _ = await collect(first)
    second = llm.chat(
        chat_ctx=chat(
            "Hello there, I am planning a trip to the seaside.", answer, "What should I pack?"
        )
    )
    _, chunks = await collect(second)
    usage = chunks[-1].usage
    assert usage is not None and second.timings is not None
    # llama.cpp reports how many prompt tokens it evaluated (prompt_n) and reused (cache_n)
    assert second.timings["cache_n"] > 0
    assert second.timings["prompt_n"] < usage.prompt_tokens / 2
    assert usage.prompt_cached_tokens == second.timings["cache_n"]


class ScriptedEngine:
    """The engine's streaming interface with a written answer: what LocalLLM does with the
    tokens near its limit must not depend on which sentence a model happens to write."""

    model_name = "scripted"
    ctx_per_slot = 2048

    def __init__(self, tokens: list[str]) -> None:
        from engines.executors import SerialExecutor

        self.tokens = tokens
        self.executor = SerialExecutor("scripted")

    def chat_stream_sync(self, request: dict[str, Any], on_chunk: Callable[[dict[str, Any]], bool]) -> None:
        n = min(len(self.tokens), int(request["max_tokens"]))
        for i, tok in enumerate(self.tokens[:n]):
            last = i == n - 1
            chunk: dict[str, Any] = {"id": "s", "choices": [
                {"delta": {"content": tok}, "finish_reason": "length" if last else None}]}
            if last:
                chunk["timings"] = {"prompt_n": 10, "cache_n": 0, "predicted_n": n}
            if on_chunk(chunk):
                return

    def read_ahead_sync(self, messages: Any) -> bool:
        return True


async def test_max_tokens_is_honoured_and_cut_at_a_sentence_end() -> None:
    """Past the soft limit (30 of 40 tokens) text waits for a sentence end; at max_tokens the
    unfinished tail is dropped. Tokens that are not spoken (emoji, markdown) count too: counting
    only spoken pieces put the limit five tokens late here and streamed " Then the dragon"."""
    words = ("The knight met a dragon . It was a cold night in the north . The dragon was "
             "tired . He lived in a cave . Then the dragon spoke to him in a low voice about "
             "the gold he kept there .").split()
    tokens = [("" if w == "." else " ") + w if i else w for i, w in enumerate(words)]
    tokens[3:3] = ["\U0001F600"] * 5  # a tiny model's emojis: not spoken, still tokens
    # tokens 30 and 31 end a sentence, 32 to 40 (" Then the dragon ...") do not
    assert tokens[30] == "." and "".join(tokens[31:40]) == " Then the dragon spoke to him in a low"
    llm = LocalLLM(engine=ScriptedEngine(tokens), temperature=0.0, max_tokens=40,  # type: ignore[arg-type]
                   persona=False, max_sentences=None)
    stream = llm.chat(chat_ctx=chat("Tell me a long story about a dragon and a knight."))
    text, chunks = await collect(stream)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 40
    assert stream.finish_reason == "length"
    assert text.endswith("He lived in a cave."), text  # the unfinished sentence was dropped


async def test_answers_stop_after_two_sentences_with_usage_counted(
    llama: LlamaEngine,
) -> None:
    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=200, persona=False)
    stream = llm.chat(chat_ctx=chat("Tell me a long story about a dragon and a knight."))
    text, chunks = await collect(stream)
    assert stream.finish_reason == "sentences"
    assert len(re.findall(r"[.!?](?=\s|$)", text)) == 2, text
    assert re.search(r"[.!?]\s*$", text), text
    usage = chunks[-1].usage  # from llama.cpp's per-token timings: generation was cut short
    assert usage is not None and 0 < usage.completion_tokens < 200
    assert usage.prompt_tokens > 10


async def test_closing_the_stream_stops_generation_and_frees_the_model(
    llama: LlamaEngine,
) -> None:
    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=400, persona=False, max_sentences=None)
    stream = llm.chat(chat_ctx=chat("Count from one to two hundred in words."))
    got = 0
    async for chunk in stream:
        got += bool(chunk.delta and chunk.delta.content)
        if got == 3:
            break
    await stream.aclose()  # the user interrupted
    # the next request is served right away (the slot was released, not finishing 400 tokens)
    text, _ = await asyncio.wait_for(collect(llm.chat(chat_ctx=chat("Say hello."))), timeout=60)
    assert text.strip()


async def test_tools_are_ignored_gracefully(llama: LlamaEngine) -> None:
    @function_tool
    async def lookup_weather(city: str) -> str:
        """Look up the weather in a city."""
        return "sunny"

    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=40)
    text, _ = await collect(
        llm.chat(chat_ctx=chat("What is the weather in Paris?"), tools=[lookup_weather])
    )
    assert text.strip()


async def test_agent_session_holds_a_conversation_with_the_local_llm(
    local_ctx: ProviderContext,
) -> None:
    llm = create("llm", "local", local_ctx.settings.llm, local_ctx)
    async with AgentSession(llm=llm) as session:
        await session.start(Agent(instructions=DEFAULT_INSTRUCTIONS))
        result = await session.run(user_input="Hello! What is your name?")
        result.expect.next_event().is_message(role="assistant")
        result = await session.run(user_input="Nice to meet you. Can you help me plan my day?")
        msg = result.expect.next_event().is_message(role="assistant").event().item
        assert (msg.text_content or "").strip()
        llm_usage = [u for u in session.usage.model_usage if getattr(u, "provider", "") == "local"]
        assert llm_usage and llm_usage[0].input_tokens > 0 and llm_usage[0].output_tokens > 0


async def test_a_verbatim_answer_is_read_ahead_so_the_next_turn_reads_only_its_question(
    llama: LlamaEngine,
) -> None:
    """The persona's own answer costs the model nothing, but the next prompt begins with it:
    read while it is spoken, the next turn evaluates only the new question (about 20 tokens
    with its template and facts, instead of 50 to 70 with the answer)."""
    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=40)
    asked = "What is your name, and what can you help me with today?"
    first = llm.chat(chat_ctx=chat(asked))
    answer, _ = await collect(first)
    assert first.finish_reason == "grounded" and first.read_ahead is not None
    assert await asyncio.wait_for(first.read_ahead, 60)
    second = llm.chat(chat_ctx=chat(asked, answer, "Why is the sea salty?"))
    await collect(second)
    assert second.timings is not None
    assert second.timings["prompt_n"] <= 30, second.timings


async def test_a_long_call_whose_oldest_turns_leave_the_window_still_reads_only_the_new_turn(
    local_ctx: ProviderContext,
) -> None:
    """Past the slot's context the prompt drops its oldest turns, so what follows the persona
    prefix moves: without llama.cpp's cache reuse (KV shift) every later turn evaluated the
    whole history again (about 1,500 tokens, 13 to 18 s on one thread, from the 25th turn of
    a call on), with it only the new question and the reply before it."""
    from dataclasses import replace

    from engines.llama import agent_options, load_llama

    # the agent's options on a small slot, so the window fills within a few turns
    options = replace(agent_options(local_ctx.settings), use="window-test", parallel=1,
                      ctx_per_slot=640)
    engine = load_llama("smollm2-135m", options)
    llm = LocalLLM(engine=engine, temperature=0.0, max_tokens=40, steer="facts")
    questions = ["Tell me about the weather at the seaside in summer.",
                 "What should I pack for a week there?", "How warm is the sea in June?",
                 "Can I swim there with children?", "Where can we eat fish and chips?",
                 "Is it busy at weekends?", "How do I get there by train?",
                 "What do I do when it rains?", "Are there any museums nearby?",
                 "Which beach is the quietest?", "Is parking easy to find?",
                 "Do the shops open on Sundays?", "Where can I rent a bicycle?"]
    turns: list[str] = []
    dropped_at: int | None = None
    evaluated_after_drop: list[int] = []
    for i, question in enumerate(questions):
        turns.append(question)
        ctx = chat(*turns)
        stream = llm.chat(chat_ctx=ctx)
        answer, _ = await collect(stream)
        turns.append(answer.strip() or "I see.")
        sent = stream._request()["messages"]  # the prompt the model was sent
        if dropped_at is None and not any(questions[0] in m["content"] for m in sent):
            dropped_at = i
        elif dropped_at is not None:
            assert stream.timings is not None
            evaluated_after_drop.append(int(stream.timings["prompt_n"]))
    assert dropped_at is not None and len(evaluated_after_drop) >= 3, (dropped_at, turns)
    # the new question with its facts and template, and the reply before it: never the history
    assert max(evaluated_after_drop) <= 150, evaluated_after_drop


async def test_between_turns_the_model_reads_ahead_so_the_next_reply_waits_only_for_the_question(
    llama: LlamaEngine,
) -> None:
    """Once a reply is stored the live worker has the model read the conversation and the
    head of the next question: the next reply then evaluates the caller's words and the
    assistant's head (10 tokens here), not also the template between them and whatever of
    the stored reply differs from the tokens generated (16 and more without it)."""
    from live.agent import AvatarAgent
    from live.worker import _read_ahead_between_turns

    llm = LocalLLM(engine=llama, temperature=0.0, max_tokens=40, steer="off")

    def evaluated(session: AgentSession[Any]) -> int:
        usage = [u for u in session.usage.model_usage if getattr(u, "provider", "") == "local"]
        return sum(u.input_tokens - u.input_cached_tokens for u in usage)  # type: ignore[attr-defined]

    async with AgentSession(llm=llm) as session:
        _read_ahead_between_turns(session, llm)
        await session.start(AvatarAgent(instructions=DEFAULT_INSTRUCTIONS, guard=False))
        result = await session.run(user_input="Hello there, I am planning a trip to the seaside.")
        result.expect.next_event().is_message(role="assistant")
        await asyncio.wait_for(llm.read_ahead_settled(), 60)
        before = evaluated(session)
        result = await session.run(user_input="What should I pack?")
        result.expect.next_event().is_message(role="assistant")
        # "What should I pack?" is 5 tokens; "<|im_end|>\n<|im_start|>assistant\n" 5 more
        assert evaluated(session) - before <= 11, evaluated(session) - before
