"""One URL in front of the cluster's nodes, as a load balancer gives a real deployment.

A TCP proxy: each connection goes to the first node that accepts it, starting from the next
node in turn. A killed node refuses connections, so the API calls, webhooks' senders and
callers' SDKs that use this URL reach a live node, as they would behind a load balancer
that health-checks its nodes. Signalling only: WebRTC media goes to the room's node's own
address, which its ICE candidates name.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading


class FailoverProxy:
    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self._targets = targets
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="failover",
                                        daemon=True)
        self.port = 0

    def start(self) -> str:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        self.port = fut.result(10)
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        first = next(self._turn)
        for i in range(len(self._targets)):
            host, port = self._targets[(first + i) % len(self._targets)]
            try:
                return await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
            except (OSError, TimeoutError):
                continue
        raise ConnectionRefusedError("no node accepts connections")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
