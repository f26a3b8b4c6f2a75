"""The client API over real mTLS sockets: identity, the refusal matrix, CRL hot reload (open connections
included), error shape."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from config.settings import Settings
from crypto.pki import PkiPaths, init_pki, issue_client, revoke_client
from tests.support.keepalive import keepalive
from tests.support.mtls import client, client_context, gateway


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


async def test_ping_answers_the_callers_tenant_and_role(settings: Settings, pki: PkiPaths) -> None:
    async with gateway(settings) as gw:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        for name, role in (("acme", "client"), ("globex", "client"), ("ops", "operator")):
            async with client(pki, name) as session, session.get(url) as resp:
                assert resp.status == 200
                assert resp.headers["Request-Id"].startswith("req_")
                body = await resp.json()
                assert body == {"object": "ping", "tenant": name, "role": role, "livemode": False}
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_http_requests_total", route="/v1/ping", status="200") == 3
        assert metric(text, "payhub_tls_handshakes_total") >= 3
        assert metric(text, "payhub_db_pool_connections", state="max") == settings.database.pool_max


async def _refused(url: str, ctx: ssl.SSLContext) -> None:
    """The request must fail at the TLS layer (no HTTP response at all)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(url) as resp:
                await resp.read()


async def test_refusal_matrix(settings: Settings, pki: PkiPaths, tmp_path: Path) -> None:
    other = PkiPaths(tmp_path / "other-pki")
    init_pki(other, {"acme": "client"})
    async with gateway(settings) as gw:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        await _refused(url, client_context(pki, None))  # no client certificate
        await _refused(url, client_context(pki, "acme", cert_pki=other))  # a certificate from another CA
        await _refused(url, client_context(pki, "acme", max_version=ssl.TLSVersion.TLSv1_1))  # TLS 1.1
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_tls_handshake_failures_total", reason="client_certificate") >= 2
        assert metric(text, "payhub_tls_handshake_failures_total", reason="protocol") >= 1
        assert metric(text, "payhub_http_requests_total") == 0  # nothing reached the application


async def test_revoked_certificate_is_refused_after_hot_reload(settings: Settings, pki: PkiPaths) -> None:
    issue_client(pki, "acme-laptop", tenant="acme", role="client")
    async with gateway(settings) as gw:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        ctx = client_context(pki, "acme-laptop")
        async with keepalive(gw.api_port, ctx) as open_before:
            assert (await open_before.get("/v1/ping")).status == 200
            revoke_client(pki, "acme-laptop")
            # New connections are refused within the reload interval (0.2 s here, ≤ 5 s by contract)...
            for _ in range(50):
                try:
                    async with (
                        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as fresh,
                        fresh.get(url) as resp,
                    ):
                        await resp.read()
                except aiohttp.ClientError:
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail("revoked certificate still accepted 5 s after the CRL changed")
            # ...and so is the next request on the connection opened before the reload, which is then closed.
            reply = await open_before.get("/v1/ping")
            assert reply.status == 403
            assert reply.body["error"]["type"] == "authentication_error"
            assert "revoked" in reply.body["error"]["message"]
            assert reply.headers["connection"] == "close"
            assert await open_before.closed_by_server()
        # Others are still accepted on new connections.
        async with client(pki, "globex") as session, session.get(url) as resp:
            assert resp.status == 200
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_tls_reloads_total", outcome="ok") >= 1
        assert metric(text, "payhub_authentication_failures_total") == 1


@pytest.mark.parametrize(
    ("tenant", "role"),
    [("initech", "client"), ("ops", "client"), ("acme", "operator")],
)
async def test_unknown_tenant_or_wrong_role_gets_403(
    settings: Settings, pki: PkiPaths, tenant: str, role: str
) -> None:
    name = f"{tenant}-{role}"
    issue_client(pki, name, tenant=tenant, role=role)
    async with (
        gateway(settings) as gw,
        client(pki, name) as session,
        session.get(f"https://localhost:{gw.api_port}/v1/ping") as resp,
    ):
        assert resp.status == 403
        body = await resp.json()
    assert body["error"]["type"] == "authentication_error"
    assert body["error"]["request_id"] == resp.headers["Request-Id"]


async def test_error_shape_for_refused_requests(settings: Settings, pki: PkiPaths) -> None:
    async with gateway(settings) as gw, client(pki, "acme") as session:
        base = f"https://localhost:{gw.api_port}"
        cases = [
            (session.get(f"{base}/v1/nope"), 404, "invalid_request_error", "resource_missing"),
            (session.delete(f"{base}/v1/ping"), 405, "invalid_request_error", "method_not_allowed"),
            (
                session.post(
                    f"{base}/v1/ping", data=b"{not json", headers={"Content-Type": "application/json"}
                ),
                400,
                "invalid_request_error",
                "invalid_json",
            ),
            (
                session.post(f"{base}/v1/ping", json={"message": 7}),
                400,
                "invalid_request_error",
                "parameter_invalid",
            ),
            (
                session.post(f"{base}/v1/ping", json={"colour": "x"}),
                400,
                "invalid_request_error",
                "parameter_unknown",
            ),
            (
                session.post(
                    f"{base}/v1/ping",
                    data=b"x" * (1024 * 1024 + 1),
                    headers={"Content-Type": "application/json"},
                ),
                413,
                "invalid_request_error",
                "request_too_large",
            ),
        ]
        for request, status, error_type, code in cases:
            async with request as resp:
                assert resp.status == status, await resp.text()
                assert resp.content_type == "application/json"
                error = (await resp.json())["error"]
                assert (error["type"], error["code"]) == (error_type, code)
                assert error["request_id"] == resp.headers["Request-Id"]
                assert "Traceback" not in error["message"]
        async with session.post(f"{base}/v1/ping", json={"message": 7}) as resp:
            assert (await resp.json())["error"]["param"] == "message"


async def test_silent_client_is_dropped_after_handshake_timeout(settings: Settings, pki: PkiPaths) -> None:
    """A client that connects and never speaks TLS (slowloris at the handshake) is cut off."""
    async with gateway(settings) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.api_port)
        started = asyncio.get_running_loop().time()
        # Meanwhile a normal client is served.
        url = f"https://localhost:{gw.api_port}/v1/ping"
        async with client(pki, "acme") as session, session.get(url) as resp:
            assert resp.status == 200
        assert await asyncio.wait_for(reader.read(), timeout=10) == b""  # closed by the server
        waited = asyncio.get_running_loop().time() - started
        writer.close()
        limit = settings.server.tls_handshake_timeout
        assert limit - 0.5 <= waited < limit + 3
        assert metric(await scrape(gw.ops_port), "payhub_tls_handshake_failures_total", reason="timeout") == 1
