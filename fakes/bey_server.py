"""Beyond Presence's sessions API on 127.0.0.1, plus the worker that then joins the room.

livekit-plugins-bey posts ``POST {api_url}/v1/sessions`` with header ``x-api-key`` and JSON
``{"transport": "livekit", "avatar_id", "url", "token"}``; it reads nothing from the answer but
the status. Like the vendor's worker, this fake then joins the room with that URL and token and
plays the avatar (``FakeAvatarWorker``; the plugin streams the agent's speech at 16 kHz).
Failure modes as the Tavus fake: ``fail_status``, ``hang``, ``join_room=False``; a wrong key is
refused with a body that echoes it. Every POST is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from fakes.vendor_avatar import VendorAvatarFake


@dataclass
class BeyRequest:
    path: str
    api_key: str | None
    body: dict[str, Any]


@dataclass
class BeyFake(VendorAvatarFake):
    api_key: str = "bey-test-key-0123456789"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/sessions", self._create_session)

    async def _create_session(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("x-api-key")
        self.requests.append(BeyRequest(request.path, key, body))
        if key != self.api_key:
            return web.json_response({"detail": f"Invalid API key {key}"}, status=401)
        await self.hang_if_asked()
        if self.fail_status is not None:
            return web.json_response({"detail": "internal"}, status=self.fail_status)
        url, token = body.get("url"), body.get("token")
        if body.get("transport") != "livekit" or not url or not token:
            return web.json_response({"detail": "livekit transport, url and token required"},
                                     status=422)
        self.join(url, token)
        return web.json_response(
            {"id": f"bey-{len(self.requests):06d}", "avatar_id": body.get("avatar_id"),
             "transport": "livekit"},
            status=201,
        )
