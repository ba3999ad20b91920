"""A session's LLM talks only to endpoints the operator named (issue #12, item 1)."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from config.policy import llm_base_url
from config.session import SessionSpec
from config.settings import LLMSettings
from fakes.openai_server import OpenAIFake
from live.pipeline import slot_options
from live.providers.registry import ProviderContext, create

from .test_openai_llm import collect

pytestmark = pytest.mark.integration


async def test_spec_picks_a_named_endpoint_and_the_key_goes_only_there(
    openai_fake: OpenAIFake, ctx: ProviderContext
) -> None:
    async with OpenAIFake(api_key=openai_fake.api_key) as second:
        settings = LLMSettings(
            provider="openai", api_key=SecretStr(openai_fake.api_key), model="fake-gpt",
            base_url=openai_fake.base_url, endpoints={"second": second.base_url},
        )
        spec = SessionSpec.model_validate({"llm": {"endpoint": "second"}})
        opts = slot_options(settings, spec.llm, base_url=llm_base_url(spec, settings))
        model = create("llm", "openai", opts, ctx)
        try:
            await collect(model, "hello")
        finally:
            await model.aclose()
        assert len(second.requests) == 1 and openai_fake.requests == []
        assert second.requests[0].authorization == f"Bearer {openai_fake.api_key}"
