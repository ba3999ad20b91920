"""The real livekit-plugins-openai LLM against the OpenAI-compatible fake on 127.0.0.1."""

from __future__ import annotations

import pytest
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    Agent,
    AgentSession,
    APIConnectOptions,
    APIStatusError,
    llm,
)
from livekit.agents.voice.run_result import RunResult
from pydantic import SecretStr

from config.settings import LLMSettings
from fakes.openai_server import OpenAIFake
from live.providers.fallback import build_llm_with_fallback
from live.providers.registry import ProviderContext, create
from tests.stubs import EchoLLM

pytestmark = pytest.mark.integration


def options(fake: OpenAIFake, **kw: object) -> LLMSettings:
    return LLMSettings(
        provider="openai",
        api_key=SecretStr(fake.api_key),
        base_url=fake.base_url,
        model="fake-gpt",
        **kw,  # type: ignore[arg-type]
    )


async def collect(
    model: llm.LLM, text: str, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
) -> list[llm.ChatChunk]:
    chat_ctx = llm.ChatContext()
    chat_ctx.add_message(role="system", content="Be brief.")
    chat_ctx.add_message(role="user", content=text)
    async with model.chat(chat_ctx=chat_ctx, conn_options=conn_options) as stream:
        return [chunk async for chunk in stream]


async def test_streams_text_and_usage(openai_fake: OpenAIFake, ctx: ProviderContext) -> None:
    model = create("llm", "openai", options(openai_fake, max_tokens=42, temperature=0.3), ctx)
    try:
        chunks = await collect(model, "hello there")
    finally:
        await model.aclose()

    text = "".join(c.delta.content for c in chunks if c.delta and c.delta.content)
    assert text == "Hello from the fake model."
    assert sum(1 for c in chunks if c.delta and c.delta.content) == 5  # streamed, not one blob
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens == 5
    assert usage[0].prompt_tokens == 7  # 2 + 2 words, plus 3 per request in the fake
    assert usage[0].total_tokens == 12

    (req,) = openai_fake.requests
    assert req.authorization == f"Bearer {openai_fake.api_key}"
    assert req.body["model"] == "fake-gpt"
    assert req.body["stream"] is True
    assert req.body["stream_options"] == {"include_usage": True}
    assert req.body["max_tokens"] == 42  # compatible servers get the classic field
    assert req.body["temperature"] == 0.3
    assert req.body["messages"][-1] == {"role": "user", "content": "hello there"}


async def test_server_error_is_a_livekit_api_error(
    openai_fake: OpenAIFake, ctx: ProviderContext
) -> None:
    openai_fake.fail_status = 500
    model = create("llm", "openai", options(openai_fake), ctx)
    try:
        with pytest.raises(APIStatusError) as info:
            await collect(model, "hi", APIConnectOptions(max_retry=0))
    finally:
        await model.aclose()
    assert info.value.status_code == 500
    assert len(openai_fake.requests) == 1  # the client itself does not retry (max_retries=0)
    assert info.value.retryable  # nothing was spoken yet: a fallback may take over


async def test_conversation_continues_when_openai_fails_mid_session(
    openai_fake: OpenAIFake, ctx: ProviderContext
) -> None:
    primary = create("llm", "openai", options(openai_fake), ctx)
    local = EchoLLM()
    adapter = build_llm_with_fallback(primary, local)
    async with AgentSession(llm=adapter) as session:
        await session.start(Agent(instructions="Be brief."))

        first: RunResult[None] = await session.run(user_input="what is the time")
        msg = first.expect.next_event().is_message(role="assistant").event().item
        assert msg.text_content == "Hello from the fake model."
        assert local.calls == 0

        openai_fake.fail_status = 503  # the vendor goes down mid-session
        second: RunResult[None] = await session.run(user_input="are you still there")
        msg = second.expect.next_event().is_message(role="assistant").event().item
        assert msg.text_content == "local model heard: are you still there"
        assert local.calls == 1
    await adapter.aclose()


async def test_stream_cut_before_first_token_falls_back(
    openai_fake: OpenAIFake, ctx: ProviderContext
) -> None:
    openai_fake.close_after_chunks = 0  # headers sent, then the connection drops
    primary = create("llm", "openai", options(openai_fake), ctx)
    adapter = build_llm_with_fallback(primary, EchoLLM())
    try:
        chunks = await collect(adapter, "anyone home")
    finally:
        await adapter.aclose()
        await primary.aclose()
    text = "".join(c.delta.content for c in chunks if c.delta and c.delta.content)
    assert text == "local model heard: anyone home"


async def test_the_agent_corrects_a_wrong_name_and_passes_the_knowledge(
    openai_fake: OpenAIFake, ctx: ProviderContext
) -> None:
    """Any LLM goes through the agent's guard and gets the retrieved knowledge."""
    from live.agent import AvatarAgent

    openai_fake.reply = lambda _messages: "Hi, I'm Emily, the assistant here. We open at 9."
    model = create("llm", "openai", options(openai_fake), ctx)
    agent = AvatarAgent(
        instructions="You are Ava, the assistant of Bluebell Bakery.",
        knowledge="Opening hours: we open at 7:30 am.\n\nCroissant: a croissant costs 2 dollars.",
    )
    try:
        async with AgentSession(llm=model) as session:
            await session.start(agent)
            result = await session.run(user_input="Who are you, and when do you open?")
            msg = result.expect.next_event().is_message(role="assistant").event().item
    finally:
        await model.aclose()
    assert msg.text_content == "Hi, I'm Ava, the assistant here. We open at 9."
    assert agent.corrections == 1
    messages = openai_fake.requests[-1].body["messages"]
    assert messages[-1] == {"role": "user", "content": "Who are you, and when do you open?"}
    assert "7:30 am" in messages[-2]["content"] and "croissant" not in messages[-2]["content"]
