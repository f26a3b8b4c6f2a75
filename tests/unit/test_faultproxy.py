"""The test suite's TCP fault proxy (tests/support/faultproxy.py) against a real echo server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.faultproxy import Fault, FaultProxy


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    received: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                received.append(data)
                writer.write(b"echo:" + data)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy reset it on purpose
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    running = await FaultProxy.start(server.sockets[0].getsockname()[1])
    yield running
    await running.close()
    server.close()
    await server.wait_closed()


async def ask(proxy: FaultProxy, message: bytes = b"hello", wait: float = 1.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(message)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), wait)
    finally:
        writer.close()


async def answer_or_error(proxy: FaultProxy) -> bytes | type[BaseException]:
    """What the client got: bytes (b"" is EOF) or the connection error class."""
    try:
        return await ask(proxy)
    except (ConnectionResetError, BrokenPipeError) as exc:
        return type(exc)


async def test_a_faithful_proxy_passes_both_ways(proxy: FaultProxy) -> None:
    assert await ask(proxy) == b"echo:hello"
    assert (proxy.counts.to_upstream, proxy.counts.to_client) == (5, 10)


async def test_delay_holds_each_chunk(proxy: FaultProxy) -> None:
    proxy.set(Fault.delay(0.3))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await ask(proxy, wait=2.0) == b"echo:hello"
    assert loop.time() - started >= 0.6  # once each way


async def test_reset_refuses_before_anything_is_sent(proxy: FaultProxy) -> None:
    proxy.set(Fault.reset())
    with pytest.raises(ConnectionResetError):
        await ask(proxy)
    assert proxy.counts.to_upstream == 0


async def test_reset_after_the_request_reached_the_peer(proxy: FaultProxy) -> None:
    proxy.set(Fault.reset_after_request())
    assert await answer_or_error(proxy) in (ConnectionResetError, b"")  # no answer, ever
    assert proxy.counts.to_upstream == 5 and proxy.counts.to_client == 0


async def test_blackhole_swallows_and_never_answers(proxy: FaultProxy) -> None:
    proxy.set(Fault.blackhole())
    with pytest.raises(TimeoutError):
        await ask(proxy, wait=0.3)
    assert proxy.counts.to_upstream == 0


async def test_drop_closes_cleanly(proxy: FaultProxy) -> None:
    proxy.set(Fault.drop())
    # EOF, or a reset when the client's write arrived after the close
    assert await answer_or_error(proxy) in (b"", ConnectionResetError, BrokenPipeError)
    assert proxy.counts.to_upstream == 0


async def test_cut_passes_part_of_the_answer(proxy: FaultProxy) -> None:
    proxy.set(Fault.cut(after=3))
    assert await ask(proxy) == b"ech"
    proxy.set(None)
    assert await ask(proxy) == b"echo:hello"


async def test_close_all_drops_open_connections(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"one")
    assert await reader.read(1024) == b"echo:one"
    proxy.close_all()
    with pytest.raises((ConnectionResetError, AssertionError)):
        assert await asyncio.wait_for(reader.read(1024), 1.0) != b""
    writer.close()
