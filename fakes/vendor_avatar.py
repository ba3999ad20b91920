"""What every hosted-avatar vendor fake shares: failure modes, recorded posts, the worker that
joins the room. Each vendor module adds only its own wire protocol (path, auth, body, answer)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fakes._server import LoopbackServer
from fakes.avatar_worker import FakeAvatarWorker
from fakes.tavus_server import AvatarWorker


@dataclass
class VendorAvatarFake(LoopbackServer):
    api_key: str = "vendor-test-key-0123456789"
    fail_status: int | None = None  # answer every valid post with this status
    join_room: bool = True  # False: accept the session but never join (the plugin waits)
    hang: bool = False  # never answer
    make_worker: Callable[[str, str], AvatarWorker] = FakeAvatarWorker
    requests: list[Any] = field(default_factory=list)
    workers: list[AvatarWorker] = field(default_factory=list)

    def __post_init__(self) -> None:
        LoopbackServer.__init__(self)

    @property
    def api_url(self) -> str:
        return self.http_url

    async def stop(self) -> None:
        for worker in self.workers:
            await worker.stop()
        await super().stop()

    async def hang_if_asked(self) -> None:
        if self.hang:
            await asyncio.Event().wait()

    def join(self, url: str, token: str) -> None:
        """As the vendor's avatar worker does: join the room with the URL and token given."""
        if self.join_room:
            worker = self.make_worker(url, token)
            self.workers.append(worker)
            worker.start()
