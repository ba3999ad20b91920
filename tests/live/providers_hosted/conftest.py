"""Fixtures for the hosted-provider tests: fakes on 127.0.0.1 and a provider context.

Importing the provider modules registers them (``live.providers`` will import them itself
once the lead wires them into ``live/providers/__init__.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from livekit.agents import utils

import live.providers.assemblyai
import live.providers.cartesia
import live.providers.hedra
import live.providers.openai_llm
import live.providers.tavus  # noqa: F401  (registers the providers)
from config import catalog
from config.settings import load_settings
from fakes.assemblyai_server import AssemblyAIFake
from fakes.cartesia_server import CartesiaFake
from fakes.openai_server import OpenAIFake
from fakes.tavus_server import TavusFake
from live.providers.registry import ProviderContext

VENDOR_ENV = (
    *catalog.vendor_keys(),
    "LIVEKIT_URL",
    "LIVEKIT_API_KEY",
    "LIVEKIT_API_SECRET",
)


@pytest.fixture(autouse=True)
def _no_vendor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys come only from what each test passes, never from the developer's shell."""
    for name in VENDOR_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def ctx() -> ProviderContext:
    return ProviderContext(settings=load_settings(_env_file=None))


@pytest.fixture
async def http_ctx() -> AsyncIterator[None]:
    """The shared aiohttp session LiveKit plugins expect inside a job."""
    async with utils.http_context.open():
        yield


@pytest.fixture
async def openai_fake() -> AsyncIterator[OpenAIFake]:
    async with OpenAIFake() as fake:
        yield fake


@pytest.fixture
async def assemblyai_fake() -> AsyncIterator[AssemblyAIFake]:
    async with AssemblyAIFake() as fake:
        yield fake


@pytest.fixture
async def cartesia_fake() -> AsyncIterator[CartesiaFake]:
    async with CartesiaFake() as fake:
        yield fake


@pytest.fixture
async def tavus_fake() -> AsyncIterator[TavusFake]:
    async with TavusFake() as fake:
        yield fake
