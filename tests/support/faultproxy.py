"""A TCP fault proxy for tests (issue #16): sits between the gateway and a simulator on loopback and
misbehaves on demand, the way networks and peers do.

    proxy = await FaultProxy.start(upstream_port)      # the gateway is pointed at proxy.port
    proxy.set(Fault.delay(2.0))                          # every chunk each way waits 2 s
    proxy.set(Fault.reset())                             # new connections: RST at once (ECONNRESET)
    proxy.set(Fault.reset_after_request())               # the request reaches the peer, then RST
    proxy.set(Fault.reset(open_too=True))                # … and on open links, at their next request
    proxy.set(Fault.blackhole())                         # accepted, read, never answered
    proxy.set(Fault.drop())                              # accepted and closed cleanly (EOF)
    proxy.set(Fault.cut(after=5))                        # forward 5 bytes of the answer, then close
    proxy.set(None)                                      # a faithful proxy again

A fault applies to connections opened after it is set, except ``delay`` and ``cut``, which
also apply to traffic on open connections from then on (a latency spike hits pooled links), and
``reset``/``reset_after_request`` with ``open_too``: an open connection's next request is then reset
before it is forwarded / just after (a persistent link such as the ISO 8583 one is hit too).
``close_all()`` drops every open connection (a peer restart). The proxy counts connections and the
bytes it passed each way, so a test can tell whether a request reached the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Fault:
    kind: str  # delay, reset, reset_after_request, blackhole, drop, cut
    seconds: float = 0.0
    after: int = 0  # cut: bytes of the answer to pass before closing
    open_too: bool = False  # reset, reset_after_request: also at the next request of open connections

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=seconds)

    @classmethod
    def reset(cls, *, open_too: bool = False) -> Fault:
        return cls("reset", open_too=open_too)

    @classmethod
    def reset_after_request(cls, *, open_too: bool = False) -> Fault:
        return cls("reset_after_request", open_too=open_too)

    @classmethod
    def blackhole(cls) -> Fault:
        return cls("blackhole")

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def cut(cls, after: int) -> Fault:
        return cls("cut", after=after)


@dataclass
class Counts:
    connections: int = 0
    to_upstream: int = 0  # bytes the peer received
    to_client: int = 0  # bytes the client received


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0) instead of FIN: the other side sees ECONNRESET."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):  # ValueError: the socket is closed already
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _on_open(fault: Fault | None, kind: str) -> bool:
    """Whether ``fault`` is ``kind`` and applies to connections already open."""
    return fault is not None and fault.open_too and fault.kind == kind


@dataclass
class FaultProxy:
    upstream_port: int
    upstream_host: str = "127.0.0.1"
    fault: Fault | None = None
    counts: Counts = field(default_factory=Counts)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @classmethod
    async def start(cls, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> FaultProxy:
        proxy = cls(upstream_port, host)
        proxy._server = await asyncio.start_server(proxy._accept, host, port)
        return proxy

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    def set(self, fault: Fault | None) -> None:
        self.fault = fault

    def close_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()

    async def close(self) -> None:
        self.close_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts.connections += 1
        fault = self.fault
        kind = fault.kind if fault else None
        if kind == "reset":
            _abort(writer)
            return
        if kind == "drop":
            writer.close()
            return
        self._writers.add(writer)
        try:
            if kind == "blackhole":
                while await reader.read(65536):
                    pass  # swallowed: never forwarded, never answered
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
            except OSError:
                _abort(writer)
                return
            self._writers.add(up_writer)
            answered = [0]  # bytes of the answer passed on this connection (for cut)
            if kind == "reset_after_request":  # the request goes through; no answer comes back, ever
                await self._pump(reader, up_writer, answered, upstream=True, abort_client=writer)
                return
            await asyncio.gather(
                self._pump(reader, up_writer, answered, upstream=True, client=writer),
                self._pump(up_reader, writer, answered, upstream=False),
                return_exceptions=True,
            )
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        answered: list[int],
        *,
        upstream: bool,
        abort_client: asyncio.StreamWriter | None = None,
        client: asyncio.StreamWriter | None = None,  # to reset on an open connection (open_too)
    ) -> None:
        try:
            while data := await source.read(65536):
                fault = self.fault
                if fault is not None and fault.kind == "delay":
                    await asyncio.sleep(fault.seconds)
                if not upstream and _on_open(fault, "reset_after_request"):
                    continue  # the link is reset at its next request: no answer comes back meanwhile
                if upstream and client is not None and _on_open(fault, "reset"):
                    _abort(client)  # the request never reaches the peer
                    _abort(sink)
                    return
                if fault is not None and fault.kind == "cut" and not upstream:
                    room = max(fault.after - answered[0], 0)
                    if room < len(data):
                        sink.write(data[:room])
                        self.counts.to_client += room
                        await sink.drain()
                        _abort(sink)
                        return
                sink.write(data)
                await sink.drain()
                if upstream:
                    self.counts.to_upstream += len(data)
                    if abort_client is None and client is not None and _on_open(fault, "reset_after_request"):
                        abort_client = client
                    if abort_client is not None:
                        # The request went through; the answer never comes back.
                        await asyncio.sleep(0.05)
                        _abort(abort_client)
                        _abort(sink)
                        return
                else:
                    self.counts.to_client += len(data)
                    answered[0] += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()


class ProxyThread:
    """Fault proxies on their own event loop in a daemon thread, for callers whose loop does not
    always run (a hypothesis state machine runs its loop only inside each step): a proxy on such a
    loop would freeze between steps. Every method is called from the caller's thread.

        proxies = ProxyThread()
        link = proxies.add(upstream_port, port=listen_port)   # a ThreadedProxy, listening
        link.set(Fault.delay(5.0)); link.close_all(); link.set(None)
        proxies.stop()
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fault-proxies", daemon=True)
        self._thread.start()
        self.proxies: list[FaultProxy] = []

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add(self, upstream_port: int, *, host: str = "127.0.0.1", port: int = 0) -> ThreadedProxy:
        proxy = self.call(FaultProxy.start(upstream_port, host=host, port=port))
        self.proxies.append(proxy)
        return ThreadedProxy(self, proxy)

    def stop(self) -> None:
        if not self.loop.is_running():
            return

        async def close() -> None:
            for proxy in self.proxies:
                await proxy.close()
            await asyncio.sleep(0.1)  # aborted connections end their tasks; cancel what is left
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class ThreadedProxy:
    """One proxy of a :class:`ProxyThread`; ``set`` and ``close_all`` run on the proxy's loop."""

    runner: ProxyThread
    proxy: FaultProxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def counts(self) -> Counts:
        return self.proxy.counts

    def set(self, fault: Fault | None) -> None:
        async def apply() -> None:
            self.proxy.set(fault)

        self.runner.call(apply())

    def close_all(self) -> None:
        async def close() -> None:
            self.proxy.close_all()

        self.runner.call(close())
