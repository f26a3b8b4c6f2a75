"""Load shedding on a real gateway: under pressure reads get 503 first, payment writes keep going."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

from config.settings import Settings, SheddingSettings, ShedThreshold
from crypto.pki import PkiPaths
from gateway.traffic import TRAFFIC
from tests.support.mtls import client, gateway
from tests.support.traffic import eventually, metric, scrape, stalled_post, tls_open, with_limits

HIGH = ShedThreshold(lag=30.0, inflight=10_000)


@contextlib.contextmanager
def blocked_loop(block: float = 0.08, every: float = 0.02) -> Iterator[None]:
    """Keep the event loop overloaded: a callback that blocks it for ``block`` s, over and over."""
    loop = asyncio.get_running_loop()
    handle: asyncio.TimerHandle | None = None

    def hog() -> None:
        nonlocal handle
        time.sleep(block)  # the overload: CPU-bound work on the loop
        handle = loop.call_later(every, hog)

    handle = loop.call_later(every, hog)
    try:
        yield
    finally:
        assert handle is not None
        handle.cancel()


async def test_in_flight_work_sheds_reads_before_payment_writes(settings: Settings, pki: PkiPaths) -> None:
    shedding = SheddingSettings(read=ShedThreshold(lag=30.0, inflight=3), write=HIGH, payment_write=HIGH)
    async with gateway(with_limits(settings, shedding=shedding)) as gw:
        base = f"https://localhost:{gw.api_port}"
        held = [await tls_open(pki, "globex", gw.api_port) for _ in range(3)]
        try:
            for _, writer in held:  # three slow uploads keep three requests in flight
                writer.write(stalled_post("/v1/ping"))
                await writer.drain()
            await eventually(lambda: gw.api[TRAFFIC].shedder.in_flight == 3)
            async with client(pki, "acme") as acme:
                async with acme.get(f"{base}/v1/ping") as resp:
                    assert resp.status == 503
                    assert resp.headers["Retry-After"] == "1"
                    error = (await resp.json())["error"]
                    assert (error["type"], error["code"]) == ("api_error", "overloaded")
                async with acme.get(f"{base}/v1/payments") as resp:  # a list: shed too
                    assert resp.status == 503
                async with acme.post(f"{base}/v1/payments", json={}) as resp:
                    assert resp.status not in (503, 429)  # reached its handler (400: empty body)
                async with acme.post(f"{base}/v1/ping", json={}) as resp:
                    assert resp.status == 200  # other writes too, at this level
        finally:
            for _, writer in held:
                writer.close()
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_shed_requests_total", route_class="read") == 2
        assert metric(text, "payhub_shed_requests_total", route_class="payment_write") == 0


async def test_a_lagging_event_loop_sheds_reads_not_payment_writes(settings: Settings, pki: PkiPaths) -> None:
    shedding = SheddingSettings(
        lag_interval=0.01,
        read=ShedThreshold(lag=0.02, inflight=10_000),
        write=ShedThreshold(lag=0.02, inflight=10_000),
        payment_write=HIGH,
    )
    async with gateway(with_limits(settings, shedding=shedding)) as gw, client(pki, "acme") as acme:
        base = f"https://localhost:{gw.api_port}"
        shedder = gw.api[TRAFFIC].shedder
        with blocked_loop():
            await eventually(lambda: shedder.lag > 0.03)
            async with acme.get(f"{base}/v1/ping") as resp:
                assert resp.status == 503
            async with acme.post(f"{base}/v1/ping", json={}) as resp:
                assert resp.status == 503
            async with acme.post(f"{base}/v1/payments", json={}) as resp:
                assert resp.status not in (503, 429)
            lag_seen = metric(await scrape(gw.ops_port), "payhub_event_loop_lag_seconds")
            assert lag_seen > 0.02
        await eventually(lambda: shedder.lag < 0.02)  # the overload ends: reads are served again
        async with acme.get(f"{base}/v1/ping") as resp:
            assert resp.status == 200
