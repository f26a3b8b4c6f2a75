"""One HTTP/1.1 keep-alive connection over mTLS, by hand: tests that must see what happens to *that*
connection (an HTTP client pool would silently open a new one)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: Any


class KeepAlive:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    async def get(self, path: str) -> RawReply:
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await self._writer.drain()
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines if line)
        }
        body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        return RawReply(int(status_line.split()[1]), headers, orjson.loads(body) if body else None)

    async def closed_by_server(self, within: float = 5.0) -> bool:
        """True when the server closes the connection (EOF) within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                return await self._reader.read() == b""
        except (ConnectionError, ssl.SSLError):
            return True


@asynccontextmanager
async def keepalive(port: int, ctx: ssl.SSLContext) -> AsyncIterator[KeepAlive]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        yield KeepAlive(reader, writer)
    finally:
        writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
