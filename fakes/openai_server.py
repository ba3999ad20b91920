"""OpenAI-compatible chat completions on 127.0.0.1, as the ``openai`` python client expects.

``POST /v1/chat/completions`` with ``stream: true`` answers Server-Sent Events: one
``chat.completion.chunk`` per word, a final chunk with ``finish_reason: "stop"``, then (when
``stream_options.include_usage``) a chunk with empty ``choices`` and ``usage``, then
``data: [DONE]``. ``GET /v1/models`` serves prewarm. A wrong bearer key gets OpenAI's 401 body.
Failure modes: ``fail_status`` (answer every request with that status),
``close_after_chunks`` (drop the connection mid-stream) and ``stall_after_chunks`` (send that
many chunks, then keep the connection open and silent). Both mid-stream modes apply to the
next ``fail_requests`` requests only (``None``: all of them), so a recovery probe can succeed.
A vendor's pace (for benchmarks): the first chunk ``first_token_s`` after the request, then
``tokens_per_s`` chunks a second (each word is one chunk), on a fixed schedule.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fakes._server import LoopbackServer

MODEL = "fake-gpt"


@dataclass
class OpenAIRequest:
    body: dict[str, Any]
    authorization: str | None


@dataclass
class OpenAIFake(LoopbackServer):
    api_key: str = "sk-test-openai-key-0123456789"
    reply: Callable[[list[dict[str, Any]]], str] = lambda _messages: "Hello from the fake model."
    fail_status: int | None = None
    close_after_chunks: int | None = None
    stall_after_chunks: int | None = None
    fail_requests: int | None = None
    first_token_s: float = 0.0
    tokens_per_s: float | None = None
    requests: list[OpenAIRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def base_url(self) -> str:
        return f"{self.http_url}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        body = {
            "error": {
                "message": "Incorrect API key provided.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
        }
        return web.json_response(body, status=401)

    async def _models(self, request: web.Request) -> web.Response:
        if (err := self._auth_error(request)) is not None:
            return err
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "fake"}]}
        )

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(OpenAIRequest(body, request.headers.get("Authorization")))
        if (err := self._auth_error(request)) is not None:
            return err
        if self.fail_status is not None:
            return web.json_response(
                {"error": {"message": "The server had an error", "type": "server_error"}},
                status=self.fail_status,
            )
        messages = body.get("messages", [])
        text = self.reply(messages)
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages) + 3
        cid = f"chatcmpl-{len(self.requests)}"
        created = int(time.time())
        model = body.get("model", MODEL)

        def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
            }
            if usage is not None:
                obj["usage"] = usage
            return f"data: {json.dumps(obj)}\n\n".encode()

        if not body.get("stream"):
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": len(pieces),
                        "total_tokens": prompt_tokens + len(pieces),
                    },
                }
            )

        close_after, stall_after = self.close_after_chunks, self.stall_after_chunks
        if self.fail_requests is not None:
            if self.fail_requests <= 0:
                close_after = stall_after = None
            self.fail_requests -= 1
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        t0 = time.monotonic()
        for i, piece in enumerate(pieces):
            due = self.first_token_s + (i / self.tokens_per_s if self.tokens_per_s else 0.0)
            if due > 0:  # on a schedule from the request: a slow write does not add up
                await asyncio.sleep(max(0.0, t0 + due - time.monotonic()))
            if close_after is not None and i >= close_after:
                assert request.transport is not None
                request.transport.close()  # the stream breaks off mid-answer
                return resp
            if stall_after is not None and i >= stall_after:
                await self.stall()
                return resp
            delta: dict[str, Any] = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            await resp.write(chunk([{"index": 0, "delta": delta, "finish_reason": None}]))
        await resp.write(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(pieces),
                "total_tokens": prompt_tokens + len(pieces),
            }
            await resp.write(chunk([], usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
