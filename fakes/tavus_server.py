"""Tavus conversations API on 127.0.0.1, plus the worker that then joins the LiveKit room.

livekit-plugins-tavus posts ``POST {api_url}/conversations`` with header ``x-api-key`` and JSON
``{"pal_id", "face_id"?, "conversation_name", "properties": {"livekit_ws_url",
"livekit_room_token"}}`` and reads ``conversation_id`` from the answer. Like Tavus, this fake
then joins the room with that URL and token and plays the avatar (``FakeAvatarWorker``).
Failure modes: ``fail_status`` (answer every POST with it), ``hang`` (never answer) and
``join_room=False`` (accept but never join). A wrong key is refused with a body that echoes it,
the worst case for error messages. Every POST is recorded, so a test can count retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from fakes._server import LoopbackServer
from fakes.avatar_worker import FakeAvatarWorker


class AvatarWorker(Protocol):
    """Plays the vendor's worker: joins ``url`` with ``token`` once started."""

    error: BaseException | None

    def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class TavusRequest:
    path: str
    api_key: str | None
    body: dict[str, Any]


@dataclass
class TavusFake(LoopbackServer):
    api_key: str = "tvs-test-key-0123456789"
    fail_status: int | None = None
    join_room: bool = True
    hang: bool = False
    make_worker: Callable[[str, str], AvatarWorker] = FakeAvatarWorker
    requests: list[TavusRequest] = field(default_factory=list)
    workers: list[AvatarWorker] = field(default_factory=list)

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def api_url(self) -> str:
        return f"{self.http_url}/v2"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/conversations", self._create_conversation)

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop()
        await super().stop()

    async def _create_conversation(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("x-api-key")
        self.requests.append(TavusRequest(request.path, key, body))
        if key != self.api_key:
            return web.json_response({"message": f"Invalid access token {key}"}, status=401)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_status is not None:
            return web.json_response({"error": "internal"}, status=self.fail_status)
        props = body.get("properties") or {}
        url, token = props.get("livekit_ws_url"), props.get("livekit_room_token")
        if not url or not token:
            return web.json_response({"message": "livekit properties missing"}, status=400)
        conversation_id = f"c{len(self.requests):06d}"
        if self.join_room:
            worker = self.make_worker(url, token)
            self.workers.append(worker)
            worker.start()
        return web.json_response(
            {
                "conversation_id": conversation_id,
                "conversation_name": body.get("conversation_name", ""),
                "status": "active",
                "conversation_url": f"{self.http_url}/c/{conversation_id}",
            }
        )
