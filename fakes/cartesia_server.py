"""Cartesia TTS websocket on 127.0.0.1, as livekit-plugins-cartesia speaks it.

The plugin opens ``GET {ws base}/tts/websocket?cartesia_version=...`` with header
``X-API-Key`` and sends JSON requests: ``model_id``, ``voice``, ``output_format``
(``raw``/``pcm_s16le``/``sample_rate``), ``context_id``, ``transcript`` (one sentence) and
``continue`` (false on the last, empty, one), optionally ``add_timestamps``; ``{"context_id",
"cancel": true}`` cancels. The server answers per context: ``{"type": "chunk", "data": <base64
PCM>, "done": false}``, ``{"type": "timestamps", "word_timestamps": {"words", "start", "end"}}``
and ``{"type": "done", "done": true}``.

This fake synthesizes a tone of ``seconds_per_char`` per character, so the audio length follows
the text. ``POST /tts/bytes`` (the plugin's non-streaming path) returns the same raw PCM.
Failure modes: ``reject_status`` (refuse the handshake), ``close_on_request`` (drop the socket
when a request arrives), ``close_after_chunks`` (drop the socket after sending that many audio
chunks on it, mid-sentence) and ``stall_after_chunks`` (send that many, then stay silent with
the socket open). The mid-stream modes hit the first ``fail_sockets`` sockets (``None``: all).
Word timestamps come after a request's audio, or with ``timestamps_as_spoken`` as the live
service sends them for longer texts: each word's right after the chunk its audio starts in.
A vendor's pace (for benchmarks): a context's first audio ``first_byte_s`` after its first
request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from fakes._server import LoopbackServer

CHUNK_SECONDS = 0.1


def tone(seconds: float, sample_rate: int, freq: float = 220.0) -> bytes:
    """16-bit mono PCM of a sine: audible, non-silent, of an exact length."""
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    return (np.sin(2 * math.pi * freq * t) * 8000).astype("<i2").tobytes()


@dataclass
class CartesiaFake(LoopbackServer):
    api_key: str = "sk_car_test-key-0123456789"
    seconds_per_char: float = 0.04
    reject_status: int | None = None
    close_on_request: bool = False
    close_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    fail_sockets: int | None = None
    timestamps_as_spoken: bool = False
    first_byte_s: float = 0.0
    audio_chunks_sent: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)
    handshakes: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def base_url(self) -> str:
        return self.http_url  # the plugin turns http:// into ws:// itself

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/tts/websocket", self._ws)
        app.router.add_post("/tts/bytes", self._bytes)

    def _refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("X-API-Key") != self.api_key:
            return web.json_response({"error": "Invalid API key"}, status=401)
        if self.reject_status is not None:
            return web.json_response({"error": "unavailable"}, status=self.reject_status)
        return None

    async def _bytes(self, request: web.Request) -> web.Response:
        if (err := self._refusal(request)) is not None:
            return err
        body = await request.json()
        self.requests.append(body)
        rate = int(body["output_format"]["sample_rate"])
        pcm = tone(len(body["transcript"]) * self.seconds_per_char, rate)
        return web.Response(body=pcm, content_type="application/octet-stream")

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self.handshakes.append(dict(request.query))
        if (err := self._refusal(request)) is not None:
            return err
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        faulty = self.fail_sockets is None or self.fail_sockets > 0
        if self.fail_sockets is not None:
            self.fail_sockets -= 1
        budget = [0]  # audio chunks sent on this socket
        cancelled: set[str] = set()
        begun: set[str] = set()  # contexts whose first audio went out
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            req = json.loads(msg.data)
            self.requests.append(req)
            if self.close_on_request:
                await ws.close(code=1011, message=b"internal error")
                break
            ctx = req.get("context_id", "")
            if req.get("cancel"):
                cancelled.add(ctx)
                continue
            if ctx in cancelled:
                continue
            text = req.get("transcript", "")
            rate = int(req["output_format"]["sample_rate"])
            if text.strip():
                if ctx not in begun:
                    begun.add(ctx)
                    if self.first_byte_s > 0:
                        await asyncio.sleep(self.first_byte_s)
                cut = await self._speak(
                    ws,
                    ctx,
                    text,
                    rate,
                    timestamps=bool(req.get("add_timestamps")),
                    sent=budget,
                    faulty=faulty,
                )
                if cut:
                    break
            if not req.get("continue", False):
                await ws.send_json(
                    {"type": "done", "done": True, "status_code": 206, "context_id": ctx}
                )
        return ws

    async def _speak(
        self,
        ws: web.WebSocketResponse,
        ctx: str,
        text: str,
        rate: int,
        *,
        timestamps: bool,
        sent: list[int],
        faulty: bool,
    ) -> bool:
        """Send one sentence; True when the socket was cut (or stalled) on purpose."""
        pcm = tone(len(text.strip()) * self.seconds_per_char, rate)
        step = int(CHUNK_SECONDS * rate) * 2
        words = text.split()
        per = len(pcm) / 2 / rate / max(1, len(words))
        told = 0  # words whose timestamps went out
        for i in range(0, len(pcm), step):
            if faulty and self.close_after_chunks is not None and sent[0] >= self.close_after_chunks:
                await ws.close(code=1011, message=b"internal error")
                return True
            if faulty and self.stall_after_chunks is not None and sent[0] >= self.stall_after_chunks:
                await self.stall()
                return True
            sent[0] += 1
            self.audio_chunks_sent += 1
            await ws.send_json(
                {
                    "type": "chunk",
                    "data": base64.b64encode(pcm[i : i + step]).decode(),
                    "done": False,
                    "status_code": 206,
                    "step_time": 1.0,
                    "context_id": ctx,
                }
            )
            if timestamps and self.timestamps_as_spoken:
                sent_s = (i + step) / 2 / rate
                upto = told
                while upto < len(words) and upto * per < sent_s:
                    upto += 1
                await self._timestamps(ws, ctx, words, per, told, upto)
                told = upto
        if timestamps:
            await self._timestamps(ws, ctx, words, per, told, len(words))
        return False

    async def _timestamps(
        self, ws: web.WebSocketResponse, ctx: str, words: list[str], per: float, lo: int, hi: int
    ) -> None:
        """Word timestamps of ``words[lo:hi]`` (seconds from the start of the request)."""
        if hi <= lo:
            return
        await ws.send_json(
            {
                "type": "timestamps",
                "done": False,
                "status_code": 206,
                "context_id": ctx,
                "word_timestamps": {
                    "words": words[lo:hi],
                    "start": [i * per for i in range(lo, hi)],
                    "end": [(i + 1) * per for i in range(lo, hi)],
                },
            }
        )
