"""What the traffic middleware costs per request (figures quoted in docs/traffic.md).

The middleware is timed on its own, around a handler that does nothing, with its real state
(limits over memory, or over the Redis in PAYHUB_REDIS_URL): classification, shedding check,
tenant budget (hit + window stats), concurrency slot, headers, and for a payment POST the JSON
shape scan. Run with ``-s`` to see the numbers; the assertions are deliberately loose.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from config.settings import DEFAULT_CONFIG, Settings, TenantRates, load_settings
from gateway.identity import Identity
from gateway.keys import IDENTITY, METRICS, SETTINGS
from gateway.metrics import Metrics
from gateway.traffic import traffic_context, traffic_middleware
from tests.support.traffic import REDIS_URL, unique_prefix, with_limits

N = {"memory": 3000, "redis": 300}
PAYMENT = (
    b'{"amount": 12850, "currency": "CNY", "payment_method": {"type": "card", "card": {"number": '
    b'"4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123", "holder_name": "Li Lei"}}, '
    b'"customer": {"id": "cus_42", "email": "li@example.com", "ip": "203.0.113.7", "country": "CN"}, '
    b'"description": "June electricity", "metadata": {"order": "A-17"}}'
)


async def nothing(request: web.Request) -> web.StreamResponse:
    return web.Response()


@contextlib.asynccontextmanager
async def traffic_app(settings: Settings) -> AsyncIterator[web.Application]:
    app = web.Application()
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.router.add_get("/v1/ping", nothing)
    app.router.add_post("/v1/payments", nothing)
    async with contextlib.asynccontextmanager(traffic_context)(app):
        yield app


async def request_for(app: web.Application, method: str, path: str, body: bytes = b"") -> web.Request:
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))} if body else {}
    request = make_mocked_request(method, path, headers=headers, app=app)
    if body:
        request._read_bytes = body  # as if read once already: times the checks, not socket I/O
    match_info = await app.router.resolve(request)
    match_info.add_app(app)
    request._match_info = match_info
    request[IDENTITY] = Identity("acme", "client", "spiffe://payhub.local/tenant/acme/role/client")
    return request


async def per_request_us(request: web.Request, n: int) -> tuple[float, float]:
    """(wall, CPU) µs per request: best of three runs of n calls, minus the bare handler call."""

    async def timed(through_middleware: bool) -> tuple[float, float]:
        best = (float("inf"), float("inf"))
        for _ in range(3):
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(n):
                if through_middleware:
                    await traffic_middleware(request, nothing)
                else:
                    await nothing(request)
            best = min(best, ((time.perf_counter() - wall) / n, (time.process_time() - cpu) / n))
        return best

    (wall, cpu), (bare_wall, bare_cpu) = await timed(True), await timed(False)
    return (wall - bare_wall) * 1e6, (cpu - bare_cpu) * 1e6


def high_limits(redis_url: str | None) -> Settings:
    dev = load_settings(DEFAULT_CONFIG, env={})
    settings = with_limits(
        msgspec.structs.replace(dev, redis_url=redis_url),
        per_tenant=TenantRates(
            payment_write="1000000/2 seconds", default="1000000/second", max_concurrent=50
        ),
        redis_key_prefix=unique_prefix(),
    )
    return settings


@pytest.mark.parametrize("storage", ["memory", "redis"])
async def test_limiter_overhead_per_request(storage: str, capsys: pytest.CaptureFixture[str]) -> None:
    if storage == "redis" and not REDIS_URL:
        pytest.skip("needs a real Redis: set PAYHUB_REDIS_URL (see .ci/run)")
    async with traffic_app(high_limits(REDIS_URL if storage == "redis" else None)) as app:
        read = await per_request_us(await request_for(app, "GET", "/v1/ping"), N[storage])
        pay = await per_request_us(await request_for(app, "POST", "/v1/payments", PAYMENT), N[storage])
    with capsys.disabled():
        print(
            f"\ntraffic middleware overhead per request ({storage}): "
            f"read {read[0]:.1f} µs wall / {read[1]:.1f} µs CPU, "
            f"payment POST {pay[0]:.1f} µs wall / {pay[1]:.1f} µs CPU"
        )
    bound = 500 if storage == "memory" else 5000  # an order of magnitude above the measured figures
    assert read[0] < bound
    assert pay[0] < bound
