"""Anam's engine-session API on 127.0.0.1, plus the engine that then joins the LiveKit room.

livekit-plugins-anam posts ``POST {api_url}/v1/engine/session`` with
``Authorization: Bearer <key>`` and JSON ``{"personaConfig": {"type": "ephemeral", "name",
"avatarId", "llmId": "CUSTOMER_CLIENT_V1"}, "environment": {"livekitUrl", "livekitToken"}}``
and reads ``sessionId`` from the answer. Like Anam's engine, this fake then joins the room with
that URL and token and plays the avatar (``FakeAvatarWorker``), answering the agent's audio
stream with ``lk.playback_started`` (the plugin waits for it). Failure modes as the Tavus fake:
``fail_status``, ``hang``, ``join_room=False``; a wrong key is refused with a body that echoes
it. Every POST is recorded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._server import LoopbackServer
from tests.fakes.avatar_worker import FakeAvatarWorker
from tests.fakes.tavus_server import AvatarWorker


@dataclass
class AnamRequest:
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class AnamFake(LoopbackServer):
    api_key: str = "anam-test-key-0123456789"
    fail_status: int | None = None
    join_room: bool = True
    hang: bool = False
    make_worker: Callable[[str, str], AvatarWorker] = FakeAvatarWorker
    requests: list[AnamRequest] = field(default_factory=list)
    workers: list[AvatarWorker] = field(default_factory=list)

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def api_url(self) -> str:
        return self.http_url

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/engine/session", self._start_session)

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop()
        await super().stop()

    async def _start_session(self, request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers.get("Authorization")
        self.requests.append(AnamRequest(request.path, auth, body))
        if auth != f"Bearer {self.api_key}":
            return web.json_response({"error": f"Invalid API key {auth}"}, status=401)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail_status is not None:
            return web.json_response({"error": "internal"}, status=self.fail_status)
        persona = body.get("personaConfig") or {}
        env = body.get("environment") or {}
        url, token = env.get("livekitUrl"), env.get("livekitToken")
        if not persona.get("avatarId") or not url or not token:
            return web.json_response({"error": "avatarId and environment required"}, status=400)
        session_id = f"anam-{len(self.requests):06d}"
        if self.join_room:
            worker = self.make_worker(url, token)
            self.workers.append(worker)
            worker.start()
        return web.json_response({"sessionId": session_id, "engineHost": "127.0.0.1"})
