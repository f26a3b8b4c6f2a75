"""Rate and concurrency limits on a real gateway over mTLS: one tenant's flood never reaches another."""

from __future__ import annotations

import asyncio

import aiohttp
import msgspec

from config.settings import Settings, TenantLimitOverrides, TenantRates
from crypto.pki import PkiPaths
from gateway.traffic import TRAFFIC
from tests.support.mtls import client, gateway
from tests.support.traffic import eventually, metric, scrape, stalled_post, tls_open, with_limits


async def statuses(
    session: aiohttp.ClientSession, method: str, url: str, n: int, **kwargs: object
) -> list[int]:
    async def one() -> int:
        async with session.request(method, url, **kwargs) as resp:  # type: ignore[arg-type]
            await resp.read()
            return resp.status

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def test_flooding_tenant_gets_429s_while_another_is_unaffected(
    settings: Settings, pki: PkiPaths
) -> None:
    limited = with_limits(
        settings, per_tenant=TenantRates(default="20/minute", payment_write="100/2 seconds")
    )
    async with gateway(limited) as gw, client(pki, "acme") as acme, client(pki, "globex") as globex:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        flood, calm = await asyncio.gather(statuses(acme, "GET", url, 60), statuses(globex, "GET", url, 15))
        assert sorted(flood) == [200] * 20 + [429] * 40
        assert calm == [200] * 15  # globex never felt acme's flood

        async with acme.get(url) as resp:
            assert resp.status == 429
            assert 1 <= int(resp.headers["Retry-After"]) <= 60
            assert resp.headers["RateLimit-Limit"] == "20"
            assert resp.headers["RateLimit-Remaining"] == "0"
            error = (await resp.json())["error"]
        assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
        assert error["request_id"] == resp.headers["Request-Id"]

        async with globex.get(url) as resp:
            assert resp.status == 200
            assert resp.headers["RateLimit-Limit"] == "20"
            assert resp.headers["RateLimit-Remaining"] == "4"  # 15 calm + this one of 20
            assert 0 <= int(resp.headers["RateLimit-Reset"]) <= 60

        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_rate_limited_requests_total", limiter="tenant", route_class="read") == 41
        assert metric(text, "payhub_http_requests_total", route="/v1/ping", status="429") == 41


async def test_payment_writes_draw_from_their_own_budget(settings: Settings, pki: PkiPaths) -> None:
    """Reads cannot starve payment creation, and headers ride on error answers too."""
    overrides = {"acme": TenantLimitOverrides(payment_write="3/minute", default="2/minute")}
    async with gateway(with_limits(settings, tenants=overrides)) as gw, client(pki, "acme") as acme:
        base = f"https://localhost:{gw.api_port}"
        assert sorted(await statuses(acme, "GET", f"{base}/v1/ping", 3)) == [200, 200, 429]
        # An invalid body: the handler answers 400, after the limiter took its share.
        for remaining in ("2", "1", "0"):
            async with acme.post(f"{base}/v1/payments", json={}) as resp:
                assert resp.status not in (429, 503)
                assert resp.headers["RateLimit-Limit"] == "3"
                assert resp.headers["RateLimit-Remaining"] == remaining
        async with acme.post(f"{base}/v1/payments", json={}) as resp:
            assert resp.status == 429
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_rate_limited_requests_total", route_class="payment_write") == 1


async def test_concurrent_request_limit_per_tenant(settings: Settings, pki: PkiPaths) -> None:
    overrides = {"acme": TenantLimitOverrides(max_concurrent=2)}
    async with gateway(with_limits(settings, tenants=overrides)) as gw:
        traffic = gw.api[TRAFFIC]
        held = [await tls_open(pki, "acme", gw.api_port) for _ in range(2)]
        try:
            for _, writer in held:  # two requests whose bodies never finish: in flight until cut
                writer.write(stalled_post("/v1/ping"))
                await writer.drain()
            await eventually(lambda: traffic.concurrency.in_flight("acme") == 2)
            url = f"https://localhost:{gw.api_port}/v1/ping"
            async with client(pki, "acme") as acme, acme.get(url) as resp:
                assert resp.status == 429
                assert resp.headers["Retry-After"] == "1"
                error = (await resp.json())["error"]
                assert (error["type"], error["code"]) == ("rate_limit_error", "too_many_concurrent_requests")
            async with client(pki, "globex") as globex, globex.get(url) as resp:
                assert resp.status == 200
        finally:
            for _, writer in held:
                writer.close()
        await eventually(lambda: traffic.concurrency.in_flight("acme") == 0)
        async with client(pki, "acme") as acme, acme.get(f"https://localhost:{gw.api_port}/v1/ping") as resp:
            assert resp.status == 200
        text = await scrape(gw.ops_port)
        assert (
            metric(text, "payhub_rate_limited_requests_total", limiter="concurrency", route_class="read") == 1
        )


async def test_redis_outage_fails_open_and_still_limits(settings: Settings, pki: PkiPaths) -> None:
    """PAYHUB_REDIS_URL pointing at nothing: the gateway starts, serves, counts, and limits per process."""
    broken = msgspec.structs.replace(
        with_limits(settings, per_tenant=TenantRates(default="5/minute")), redis_url="redis://127.0.0.1:1/0"
    )
    async with gateway(broken) as gw, client(pki, "acme") as acme:
        url = f"https://localhost:{gw.api_port}/v1/ping"
        assert sorted(await statuses(acme, "GET", url, 8)) == [200] * 5 + [429] * 3
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_rate_limit_storage_errors_total") >= 1
