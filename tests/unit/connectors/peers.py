"""Peers for the HTTP connector tests (fixtures in conftest.py): one that reads every request and
answers a chosen status, one that takes no connection (connect times out), a port nobody listens on."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class StubPeer:
    """Reads each request in full (so it was delivered), then answers ``status``.

    With ``vanish`` set it stops listening as it answers (and closes the connection): a retry then
    finds the port refused, as when a peer goes down between two tries.
    """

    status: int = 200
    body: bytes = b'{"error": "stub_status", "message": "answered by the stub peer"}'
    headers: dict[str, str] = field(default_factory=dict)  # sent with every answer
    vanish: bool = False
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)  # (method, path, body)
    url: str = ""
    site: web.TCPSite | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, await request.read()))
        headers = dict(self.headers)
        if self.vanish and self.site is not None:
            await self.site.stop()
            headers["Connection"] = "close"
        if self.status in (204, 304):  # no body allowed
            return web.Response(status=self.status, headers=headers)
        return web.Response(
            status=self.status, body=self.body, content_type="application/json", headers=headers
        )


@asynccontextmanager
async def stub_peer_running() -> AsyncIterator[StubPeer]:
    peer = StubPeer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", peer.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    peer.site = web.TCPSite(runner, "127.0.0.1", 0)
    await peer.site.start()
    peer.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield peer
    finally:
        await runner.cleanup()


def nothing_listening() -> int:
    """A port nothing listens on: connecting is refused before a byte of the request is written."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def never_accepting() -> Iterator[int]:
    """A port whose listen backlog is full and never accepted: a connect there times out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    try:
        for _ in range(4):  # more than the backlog holds: the kernel drops further SYNs
            filler = socket.socket()
            fillers.append(filler)
            filler.setblocking(False)
            with suppress(BlockingIOError):  # the handshake completes (or not) in the kernel
                filler.connect(("127.0.0.1", port))
        yield port
    finally:
        for filler in fillers:
            filler.close()
        server.close()
