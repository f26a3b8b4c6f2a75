"""Hostile clients against a real gateway: slowloris, slow bodies, oversized heads and bodies, deep
JSON, a handshake flood. Each is refused in the error shape and counted, and normal clients carry on."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from config.settings import Settings
from crypto.pki import PkiPaths
from tests.support.mtls import client, gateway
from tests.support.traffic import metric, read_response, scrape, stalled_post, tls_open, with_limits

DEADLINE = 0.5  # header and body deadlines in these tests (10 s and 30 s by default)


@pytest.fixture
def hardened(settings: Settings) -> Settings:
    return with_limits(settings, input={"header_timeout": DEADLINE, "body_timeout": DEADLINE})


async def keep_pinging(pki: PkiPaths, port: int, seconds: float) -> list[int]:
    """A normal client, new connection each time, for ``seconds``: the statuses it got."""
    got: list[int] = []
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        async with client(pki, "globex") as session, session.get(f"https://localhost:{port}/v1/ping") as resp:
            got.append(resp.status)
        await asyncio.sleep(0.05)
    return got


async def test_slowloris_is_cut_off_while_normal_clients_are_served(
    hardened: Settings, pki: PkiPaths
) -> None:
    async with gateway(hardened) as gw:

        async def slowloris() -> tuple[float, int, dict[str, object]]:
            reader, writer = await tls_open(pki, "acme", gw.api_port)
            started = time.monotonic()
            writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\n")

            async def dribble() -> None:
                for _ in range(100):
                    await asyncio.sleep(0.2)
                    writer.write(b"X")  # one header byte at a time, never the blank line
                    await writer.drain()

            dribbler = asyncio.create_task(dribble())
            try:
                status, _headers, body = await read_response(reader)
                assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection is closed
                return time.monotonic() - started, status, body
            finally:
                dribbler.cancel()
                writer.close()

        slow = [asyncio.create_task(slowloris()) for _ in range(20)]
        served = await keep_pinging(pki, gw.api_port, 1.5)
        results = await asyncio.gather(*slow)
        assert served
        assert set(served) == {200}
        for waited, status, body in results:
            assert status == 408
            assert body["error"]["code"] == "request_timeout"  # type: ignore[index]
            assert DEADLINE - 0.2 <= waited < DEADLINE + 4
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_refused_requests_total", reason="header_timeout") == 20


async def test_silent_connection_after_handshake_is_closed(hardened: Settings, pki: PkiPaths) -> None:
    async with gateway(hardened) as gw:
        reader, writer = await tls_open(pki, "acme", gw.api_port)
        try:
            status, headers, body = await read_response(reader, within=DEADLINE + 4)
        finally:
            writer.close()
        assert status == 408
        assert body["error"]["type"] == "invalid_request_error"
        assert headers["request-id"].startswith("req_")


async def test_keepalive_connection_is_not_cut_between_requests(hardened: Settings, pki: PkiPaths) -> None:
    """The head deadline must not fire on an idle keep-alive connection (that is keepalive_timeout's job)."""
    async with gateway(hardened) as gw:
        reader, writer = await tls_open(pki, "acme", gw.api_port)
        try:
            writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _, _ = await read_response(reader)
            assert status == 200
            await asyncio.sleep(DEADLINE + 0.3)
            writer.write(
                b"POST /v1/ping HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 2\r\n\r\n{}"
            )
            status, _, _ = await read_response(reader)
            assert status == 200
            await asyncio.sleep(DEADLINE + 0.3)
            writer.write(b"GET /v1/ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
            status, _, _ = await read_response(reader)
            assert status == 200
        finally:
            writer.close()
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_refused_requests_total", reason="header_timeout") == 0


async def test_slow_body_gets_408(hardened: Settings, pki: PkiPaths) -> None:
    async with gateway(hardened) as gw:
        reader, writer = await tls_open(pki, "acme", gw.api_port)
        try:
            writer.write(stalled_post("/v1/ping"))
            status, headers, body = await read_response(reader, within=DEADLINE + 4)
        finally:
            writer.close()
        assert status == 408
        assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", "request_timeout")
        assert body["error"]["request_id"] == headers["request-id"]
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_refused_requests_total", reason="body_timeout") == 1


@pytest.mark.parametrize(
    ("request_head", "status", "code", "reason"),
    [
        (
            b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
            431,
            "header_too_large",
            "header_too_large",
        ),
        (
            b"GET /v1/ping HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(80))
            + b"\r\n",
            431,
            "header_too_large",
            "header_too_large",
        ),
        (
            b"GET /v1/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            431,
            "header_too_large",
            "header_too_large",
        ),
        (b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "bad_request", "bad_request"),
    ],
    ids=["long-field", "too-many-headers", "long-request-line", "malformed"],
)
async def test_oversized_or_malformed_heads_get_the_error_shape(
    settings: Settings, pki: PkiPaths, request_head: bytes, status: int, code: str, reason: str
) -> None:
    async with gateway(settings) as gw:
        reader, writer = await tls_open(pki, "acme", gw.api_port)
        try:
            writer.write(request_head)
            got, headers, body = await read_response(reader)
        finally:
            writer.close()
        assert got == status
        assert (body["error"]["type"], body["error"]["code"]) == ("invalid_request_error", code)
        assert body["error"]["request_id"] == headers["request-id"]
        assert metric(await scrape(gw.ops_port), "payhub_refused_requests_total", reason=reason) == 1
        async with (
            client(pki, "acme") as session,
            session.get(f"https://localhost:{gw.api_port}/v1/ping") as resp,
        ):
            assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "code", "reason"),
    [
        (b'{"message": ' + b"[" * 40 + b"]" * 40 + b"}", "json_too_deep", "json_too_deep"),
        (b"[" * 5000 + b"]" * 5000, "json_too_deep", "json_too_deep"),  # would be a RecursionError (500)
        (b'{"message": "' + b"x" * 9000 + b'"}', "string_too_long", "string_too_long"),
    ],
    ids=["deep", "very-deep", "long-string"],
)
async def test_hostile_json_is_refused_before_parsing(
    settings: Settings, pki: PkiPaths, body: bytes, code: str, reason: str
) -> None:
    async with gateway(settings) as gw, client(pki, "acme") as session:
        headers = {"Content-Type": "application/json"}
        async with session.post(
            f"https://localhost:{gw.api_port}/v1/ping", data=body, headers=headers
        ) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
        assert error["code"] == code
        assert metric(await scrape(gw.ops_port), "payhub_refused_requests_total", reason=reason) == 1


async def test_oversized_body_is_counted(settings: Settings, pki: PkiPaths) -> None:
    async with gateway(settings) as gw, client(pki, "acme") as session:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        body = b"x" * (settings.server.max_body_bytes + 1)
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["code"] == "request_too_large"
        assert (
            metric(await scrape(gw.ops_port), "payhub_refused_requests_total", reason="body_too_large") == 1
        )


async def test_handshake_flood_does_not_stop_normal_requests(settings: Settings, pki: PkiPaths) -> None:
    """300 connections that never speak TLS: at most 256 handshakes wait (the rest are refused at
    once), an established client keeps being served, and new clients are served once they time out."""
    async with gateway(settings) as gw:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        connector = aiohttp.TCPConnector(limit=1)
        async with client(pki, "acme") as steady:
            async with steady.get(url) as resp:  # connection established before the flood
                assert resp.status == 200
            flood = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", gw.api_port) for _ in range(300)),
                return_exceptions=True,
            )
            try:
                served = []
                for _ in range(20):
                    async with steady.get(url) as resp:
                        served.append(resp.status)
                    await asyncio.sleep(0.02)
                assert served == [200] * 20
                text = await scrape(gw.ops_port)
                assert metric(text, "payhub_tls_handshake_failures_total", reason="overload") >= 300 - 256
            finally:
                for conn in flood:
                    if isinstance(conn, tuple):
                        conn[1].close()
        await connector.close()
        # Once the silent handshakes time out (or the flood goes away), new connections succeed.
        got = await keep_pinging(pki, gw.api_port, 0.3)
        assert got
        assert set(got) == {200}
