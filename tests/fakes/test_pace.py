"""The fakes' vendor pace, which the load benchmark's latency floor is computed from: a fake
that answered sooner than told would make the product look slower than it is."""

from __future__ import annotations

import json
import time

import aiohttp
import numpy as np
import pytest

from fakes.assemblyai_server import AssemblyAIFake
from fakes.cartesia_server import CartesiaFake
from fakes.openai_server import OpenAIFake

pytestmark = pytest.mark.integration

RATE = 16000
CHUNK = RATE // 20  # 50 ms, as the plugin sends


def chunks(seconds: float, loud: bool) -> list[bytes]:
    n = int(seconds * RATE)
    pcm = (np.sin(np.arange(n) * 2 * np.pi * 180 / RATE) * (6000 if loud else 0)).astype("<i2")
    return [pcm[i : i + CHUNK].tobytes() for i in range(0, n, CHUNK)]


async def turns_before_termination(fake: AssemblyAIFake, audio: list[bytes]) -> list[dict]:
    url = f"{fake.base_url}/v3/ws?sample_rate={RATE}&encoding=pcm_s16le"
    async with aiohttp.ClientSession() as http, http.ws_connect(
        url, headers={"Authorization": fake.api_key}
    ) as ws:
        for data in audio:
            await ws.send_bytes(data)
        await ws.send_str(json.dumps({"type": "Terminate"}))
        out = []
        async for msg in ws:
            body = json.loads(msg.data)
            if body["type"] == "Termination":
                break
            if body["type"] == "Turn":
                out.append(body)
        return out


async def test_assemblyai_final_comes_after_the_silence_it_was_told() -> None:
    async with AssemblyAIFake(final_after_silence_s=0.15) as fake:
        speech = chunks(0.6, loud=True)
        short = await turns_before_termination(fake, speech + chunks(0.1, loud=False))
        assert [t["end_of_turn"] for t in short] == [False]  # a partial, no final yet
        enough = await turns_before_termination(fake, speech + chunks(0.15, loud=False))
        assert [t["end_of_turn"] for t in enough] == [False, True]
        assert enough[-1]["transcript"] == fake.transcript
        # a click shorter than a word is no utterance
        assert await turns_before_termination(fake, chunks(0.1, True) + chunks(0.5, False)) == []


async def test_openai_first_token_and_rate() -> None:
    async with OpenAIFake(reply=lambda _m: "one two three four five", first_token_s=0.2,
                          tokens_per_s=20) as fake:
        async with aiohttp.ClientSession() as http:
            t0 = time.monotonic()
            async with http.post(
                f"{fake.base_url}/chat/completions",
                headers={"Authorization": f"Bearer {fake.api_key}"},
                json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
            ) as resp:
                arrivals = []
                async for line in resp.content:
                    if line.startswith(b"data: {") and b'"content"' in line:
                        arrivals.append(time.monotonic() - t0)
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.2
    assert arrivals[-1] >= 0.2 + 4 / 20  # never faster than the rate


async def test_cartesia_first_byte_per_context() -> None:
    async with CartesiaFake(first_byte_s=0.2) as fake:
        async with aiohttp.ClientSession() as http, http.ws_connect(
            f"{fake.ws_url}/tts/websocket", headers={"X-API-Key": fake.api_key}
        ) as ws:
            fmt = {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 24000}
            t0 = time.monotonic()
            await ws.send_str(json.dumps({"context_id": "a", "transcript": "Hello there.",
                                          "continue": False, "output_format": fmt}))
            first = None
            async for msg in ws:
                body = json.loads(msg.data)
                if body["type"] == "chunk" and first is None:
                    first = time.monotonic() - t0
                if body["type"] == "done":
                    break
    assert first is not None and first >= 0.2
