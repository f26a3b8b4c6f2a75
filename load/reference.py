"""The reference servers of the benchmark (DESIGN §10), each its own process behind the gateway's
mutual TLS (``gateway.tls.build_server_context``) and the gateway's pool settings
(``gateway.store.db.create_pool``: same size, lean reset, JIT off). They serve one route,
``POST /v1/payments``, and answer JSON.

* **A**: aiohttp + mTLS + one asyncpg ``INSERT … RETURNING`` (one statement, its own transaction).
  The floor: what any database-backed HTTPS endpoint costs here.
* **B**, the minimal *durable* payment: (1) INSERT the record with its Idempotency-Key under a
  unique constraint and commit (a repeated key answers the recorded outcome), (2) one round trip
  over a persistent TCP link to an acquirer stub (2-byte length prefix, ~120-byte messages,
  multiplexed by a request id so concurrent payments share the link, as payhub's ISO 8583 link
  does), (3) UPDATE the record with the outcome and commit; only then the answer. What any gateway
  that records a payment before and after asking the acquirer must at least do.
* the **acquirer stub** B talks to: answers every message at once.

Statements are prepared once per connection (asyncpg caches ``fetchval``/``execute`` SQL).

    python -m load.reference --port 8444                               # A
    python -m load.reference --kind b --port 8445 --acquirer-port 9720 # B
    python -m load.reference --acquirer --port 9720                    # the acquirer stub
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import asyncpg
import orjson
from aiohttp import web

from config.settings import Settings, load_settings
from crypto.pki import PkiPaths
from gateway.server import freeze_startup_heap, run_loop
from gateway.store.db import create_pool, resolve_database_url
from gateway.tls import build_server_context

POOL = web.AppKey("pool", asyncpg.Pool)
Kind = Literal["a", "b"]

TABLE_A: Final = "CREATE TABLE IF NOT EXISTS bench_reference (id bigserial PRIMARY KEY, body jsonb NOT NULL)"
INSERT_A: Final = "INSERT INTO bench_reference (body) VALUES ($1::jsonb) RETURNING id"

TABLE_B: Final = """
CREATE TABLE IF NOT EXISTS bench_reference_b (
    id bigserial PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    amount bigint NOT NULL,
    currency text NOT NULL,
    body jsonb NOT NULL,
    status text NOT NULL DEFAULT 'processing',
    auth_code text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)"""
INSERT_B: Final = (
    "INSERT INTO bench_reference_b (idempotency_key, amount, currency, body) VALUES ($1, $2, $3, $4::jsonb) "
    "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
)
REPLAY_B: Final = "SELECT id, status, auth_code FROM bench_reference_b WHERE idempotency_key = $1"
UPDATE_B: Final = "UPDATE bench_reference_b SET status = $2, auth_code = $3, updated_at = now() WHERE id = $1"


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


# ---- A ----------------------------------------------------------------------------------------


async def create_payment_a(request: web.Request) -> web.Response:
    body = await request.read()
    row_id = await request.app[POOL].fetchval(INSERT_A, body.decode())
    return _json({"id": f"ref_{row_id}", "status": "succeeded"})


# ---- the acquirer link (B's side) and the stub ------------------------------------------------

REQUEST_ID = 8  # bytes of the request id that starts every message, big-endian
MESSAGE_BYTES: Final = 118  # request id + payload; with the 2-byte length prefix, 120 on the wire
APPROVED: Final = b"00"


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(2, "big") + body


def authorization(request_id: int, amount: int, currency: str, key: str) -> bytes:
    """A fixed-width 0200-like request: MTI, masked PAN, amount, currency, terminal, merchant, key."""
    payload = f"0200411111******1111{amount:012d}{currency:3.3}PAYHUB01bench-merchant {key:48.48}"
    body = request_id.to_bytes(REQUEST_ID, "big") + payload.encode()
    return body.ljust(MESSAGE_BYTES, b" ")[:MESSAGE_BYTES]


def answer_to(body: bytes) -> bytes:
    """The stub's answer: same request id, 0210, response code 00, an auth code, the request echoed."""
    request_id = body[:REQUEST_ID]
    code = f"{int.from_bytes(request_id, 'big') % 1_000_000:06d}".encode()
    return (request_id + b"0210" + APPROVED + code + body[REQUEST_ID + 4 :])[:MESSAGE_BYTES]


class StubProtocol(asyncio.Protocol):
    """Reads length-prefixed messages and answers each at once (a batch of answers per read)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        out = bytearray()
        while len(buffer) >= 2:
            size = int.from_bytes(buffer[:2], "big")
            if len(buffer) < 2 + size:
                break
            out += frame(answer_to(bytes(buffer[2 : 2 + size])))
            del buffer[: 2 + size]
        if out and self._transport is not None:
            self._transport.write(bytes(out))


async def start_acquirer_stub(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(StubProtocol, host, port)


class AcquirerLink:
    """One persistent connection to the acquirer; concurrent requests matched to answers by id."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self._host = host
        self._port = port
        self._timeout = timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is None or self._writer.is_closing():
                reader, self._writer = await asyncio.open_connection(self._host, self._port)
                self._reader_task = asyncio.create_task(self._read(reader, self._writer))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                body = await reader.readexactly(size)
                future = self._pending.pop(int.from_bytes(body[:REQUEST_ID], "big"), None)
                if future is not None and not future.done():
                    future.set_result(body)
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            writer.close()
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionResetError("the acquirer link dropped"))

    async def authorize(self, amount: int, currency: str, key: str) -> bytes:
        writer = self._writer if self._writer is not None and not self._writer.is_closing() else None
        writer = writer or await self._connect()
        request_id = next(self._ids)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        writer.write(frame(authorization(request_id, amount, currency, key)))
        try:
            return await asyncio.wait_for(future, self._timeout)
        finally:
            self._pending.pop(request_id, None)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


LINK = web.AppKey("link", AcquirerLink)


# ---- B ----------------------------------------------------------------------------------------


async def create_payment_b(request: web.Request) -> web.Response:
    key = request.headers.get("Idempotency-Key", "")
    if not 1 <= len(key) <= 255:
        return _json({"error": {"code": "idempotency_key_missing"}}, 400)
    body = await request.read()
    try:
        data = orjson.loads(body)
        amount, currency = int(data["amount"]), str(data["currency"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return _json({"error": {"code": "parameter_invalid"}}, 400)
    pool = request.app[POOL]
    row_id = await pool.fetchval(INSERT_B, key, amount, currency, body.decode())  # commit 1
    if row_id is None:  # the key was seen: answer what was recorded
        row = await pool.fetchrow(REPLAY_B, key)
        assert row is not None
        return _json({"id": f"refb_{row['id']}", "status": row["status"], "auth_code": row["auth_code"]})
    try:
        answer = await request.app[LINK].authorize(amount, currency, key)
    except (OSError, TimeoutError):
        return _json({"id": f"refb_{row_id}", "status": "processing"}, 502)
    approved = answer[REQUEST_ID + 4 : REQUEST_ID + 6] == APPROVED
    status = "succeeded" if approved else "failed"
    auth_code = answer[REQUEST_ID + 6 : REQUEST_ID + 12].decode()
    await pool.execute(UPDATE_B, row_id, status, auth_code)  # commit 2
    return _json(
        {
            "id": f"refb_{row_id}",
            "status": status,
            "amount": amount,
            "currency": currency,
            "auth_code": auth_code,
        }
    )


# ---- running one ------------------------------------------------------------------------------


@dataclass
class RunningReference:
    runner: web.AppRunner
    pool: asyncpg.Pool
    link: AcquirerLink | None

    @property
    def port(self) -> int:
        return int(self.runner.addresses[0][1])

    async def close(self) -> None:
        await self.runner.cleanup()
        if self.link is not None:
            await self.link.close()
        await self.pool.close()


async def start_reference(
    kind: Kind,
    settings: Settings,
    url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    acquirer: tuple[str, int] | None = None,
) -> RunningReference:
    pool = await create_pool(settings, url)
    async with pool.acquire() as conn:
        await conn.execute(TABLE_A if kind == "a" else TABLE_B)
    app = web.Application()
    app[POOL] = pool
    link = None
    if kind == "a":
        app.router.add_post("/v1/payments", create_payment_a)
    else:
        if acquirer is None:
            raise ValueError("reference B needs the acquirer stub's address")
        link = AcquirerLink(*acquirer)
        app[LINK] = link
        app.router.add_post("/v1/payments", create_payment_b)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=settings.server.keepalive_timeout)
    await runner.setup()
    context = build_server_context(PkiPaths(settings.pki_dir))
    await web.TCPSite(runner, host, port, ssl_context=context).start()
    return RunningReference(runner, pool, link)


async def serve(kind: Kind, port: int, acquirer_port: int) -> None:
    settings = load_settings()
    url = await resolve_database_url(settings)
    running = await start_reference(kind, settings, url, port=port, acquirer=("127.0.0.1", acquirer_port))
    freeze_startup_heap()  # as the gateway does: the comparison stays like for like
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


async def serve_stub(port: int) -> None:
    server = await start_acquirer_stub("127.0.0.1", port)
    freeze_startup_heap()
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark reference servers (A, B) and B's acquirer stub")
    parser.add_argument("--kind", choices=["a", "b"], default="a")
    parser.add_argument("--port", type=int, default=8444)
    parser.add_argument("--acquirer-port", type=int, default=9720, help="B: where the acquirer stub listens")
    parser.add_argument("--acquirer", action="store_true", help="run the acquirer stub instead, on --port")
    args = parser.parse_args()
    if args.acquirer:
        run_loop(serve_stub(args.port))
    else:
        run_loop(serve(args.kind, args.port, args.acquirer_port))


if __name__ == "__main__":
    main()
