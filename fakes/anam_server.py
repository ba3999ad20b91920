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

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fakes.vendor_avatar import VendorAvatarFake


@dataclass
class AnamRequest:
    path: str
    authorization: str | None
    body: dict[str, Any]


@dataclass
class AnamFake(VendorAvatarFake):
    api_key: str = "anam-test-key-0123456789"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/engine/session", self._start_session)

    async def _start_session(self, request: web.Request) -> web.Response:
        body = await request.json()
        auth = request.headers.get("Authorization")
        self.requests.append(AnamRequest(request.path, auth, body))
        if auth != f"Bearer {self.api_key}":
            return web.json_response({"error": f"Invalid API key {auth}"}, status=401)
        await self.hang_if_asked()
        if self.fail_status is not None:
            return web.json_response({"error": "internal"}, status=self.fail_status)
        persona = body.get("personaConfig") or {}
        env = body.get("environment") or {}
        url, token = env.get("livekitUrl"), env.get("livekitToken")
        if not persona.get("avatarId") or not url or not token:
            return web.json_response({"error": "avatarId and environment required"}, status=400)
        session_id = f"anam-{len(self.requests):06d}"
        self.join(url, token)
        return web.json_response({"sessionId": session_id, "engineHost": "127.0.0.1"})
