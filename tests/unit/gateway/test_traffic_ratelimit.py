"""Rate budgets with the `limits` library: per tenant and class, per customer and payer IP, fail-open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from config.settings import DEFAULT_CONFIG, Settings, TenantLimitOverrides, TenantRates, load_settings
from gateway import errors
from gateway.identity import Identity
from gateway.keys import IDENTITY
from gateway.metrics import Metrics
from gateway.traffic.classes import RouteClass
from gateway.traffic.concurrency import ConcurrencyLimiter
from gateway.traffic.middleware import TRAFFIC, Traffic, check_customer_limit
from gateway.traffic.ratelimit import RateLimits, SweptMemoryStorage, open_storage
from gateway.traffic.shedding import LoadShedder
from tests.support.traffic import REDIS_URL, metric, needs_redis, unique_prefix, with_limits

DEV = load_settings(DEFAULT_CONFIG, env={})
RATES = TenantRates(payment_write="5/2 seconds", default="3/minute")


def settings_with(**changes: object) -> Settings:
    return with_limits(DEV, **{"per_tenant": RATES, **changes})


@pytest.fixture
async def memory() -> AsyncIterator[SweptMemoryStorage]:
    storage = SweptMemoryStorage()
    yield storage
    await storage.close()


async def drain(limits: RateLimits, tenant: str, route_class: RouteClass, n: int) -> list[int | None]:
    """Remaining counts for n requests; None marks a 429."""
    seen: list[int | None] = []
    for _ in range(n):
        try:
            quota = await limits.check_tenant(tenant, route_class)
        except errors.RateLimited:
            seen.append(None)
        else:
            assert quota is not None
            seen.append(quota.remaining)
    return seen


async def test_one_tenant_spending_its_budget_leaves_the_other_untouched(memory: SweptMemoryStorage) -> None:
    metrics = Metrics()
    limits = RateLimits(settings_with().limits, memory, metrics)
    assert await drain(limits, "acme", RouteClass.READ, 5) == [2, 1, 0, None, None]
    assert await drain(limits, "globex", RouteClass.READ, 3) == [2, 1, 0]
    text = metrics.render().decode()
    assert metric(text, "payhub_rate_limited_requests_total", limiter="tenant", route_class="read") == 2


async def test_refusal_is_a_429_with_retry_after_and_ratelimit_headers(memory: SweptMemoryStorage) -> None:
    limits = RateLimits(settings_with().limits, memory, Metrics())
    await drain(limits, "acme", RouteClass.READ, 3)
    with pytest.raises(errors.RateLimited) as info:
        await limits.check_tenant("acme", RouteClass.READ)
    exc = info.value
    assert (exc.status, exc.type, exc.code) == (429, "rate_limit_error", "rate_limited")
    assert exc.headers["RateLimit-Limit"] == "3"
    assert exc.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(exc.headers["Retry-After"]) <= 60
    assert 0 <= int(exc.headers["RateLimit-Reset"]) <= 60


async def test_classes_without_their_own_rate_share_the_default_budget(memory: SweptMemoryStorage) -> None:
    limits = RateLimits(settings_with().limits, memory, Metrics())
    assert await drain(limits, "acme", RouteClass.READ, 2) == [2, 1]
    assert await drain(limits, "acme", RouteClass.WRITE, 2) == [0, None]  # same 3/minute budget
    # Payment writes have their own budget, untouched by the above.
    assert await drain(limits, "acme", RouteClass.PAYMENT_WRITE, 1) == [4]


async def test_burst_then_refill_for_payment_writes(memory: SweptMemoryStorage) -> None:
    """ "5/2 seconds" on a moving window: a burst of 5 at once, then capacity returns as they age out."""
    limits = RateLimits(
        settings_with(per_tenant=TenantRates(payment_write="5/1 second")).limits, memory, Metrics()
    )
    assert await drain(limits, "acme", RouteClass.PAYMENT_WRITE, 6) == [4, 3, 2, 1, 0, None]
    await asyncio.sleep(1.1)
    assert (await drain(limits, "acme", RouteClass.PAYMENT_WRITE, 1))[0] is not None


async def test_every_listed_rate_must_allow(memory: SweptMemoryStorage) -> None:
    rates = TenantRates(payment_write=None, default="10/minute; 2/second")
    limits = RateLimits(settings_with(per_tenant=rates).limits, memory, Metrics())
    assert await drain(limits, "acme", RouteClass.READ, 3) == [1, 0, None]  # the tighter 2/second reports


async def test_per_tenant_overrides_and_unlimited(memory: SweptMemoryStorage) -> None:
    overrides = {
        "globex": TenantLimitOverrides(payment_write="1/minute"),
        "ops": TenantLimitOverrides(default="unlimited"),
    }
    limits = RateLimits(settings_with(tenants=overrides).limits, memory, Metrics())
    assert await drain(limits, "globex", RouteClass.PAYMENT_WRITE, 2) == [0, None]
    assert await drain(limits, "acme", RouteClass.PAYMENT_WRITE, 2) == [4, 3]
    assert await limits.check_tenant("ops", RouteClass.OPS) is None  # unlimited: nothing to report
    assert limits.budget("ops", RouteClass.OPS) is None


def payment_request(limits: RateLimits, tenant: str) -> web.Request:
    app = web.Application()
    settings = settings_with()
    app[TRAFFIC] = Traffic(
        limits,
        ConcurrencyLimiter(lambda _: 50),
        LoadShedder(settings.limits.shedding, Metrics()),
        settings.limits.input,
        settings.server.max_body_bytes,
        Metrics(),
    )
    request = make_mocked_request("POST", "/v1/payments", app=app)
    request[IDENTITY] = Identity(
        tenant=tenant, role="client", spiffe_id=f"spiffe://payhub.local/tenant/{tenant}"
    )
    return request


async def test_check_customer_limit_per_customer(memory: SweptMemoryStorage) -> None:
    metrics = Metrics()
    limits = RateLimits(settings_with(per_customer="2/minute").limits, memory, metrics)
    acme = payment_request(limits, "acme")
    await check_customer_limit(acme, "cus_1")
    await check_customer_limit(acme, "cus_1")
    with pytest.raises(errors.RateLimited) as info:
        await check_customer_limit(acme, "cus_1")
    assert info.value.code == "customer_rate_limited"
    assert int(info.value.headers["Retry-After"]) >= 1
    await check_customer_limit(acme, "cus_2")  # another customer
    await check_customer_limit(payment_request(limits, "globex"), "cus_1")  # same id, other tenant
    await check_customer_limit(acme, None)  # no customer given: nothing to charge
    text = metrics.render().decode()
    assert (
        metric(text, "payhub_rate_limited_requests_total", limiter="customer", route_class="payment_write")
        == 1
    )


async def test_check_customer_limit_per_payer_ip(memory: SweptMemoryStorage) -> None:
    limits = RateLimits(settings_with(per_customer_ip="3/minute").limits, memory, Metrics())
    acme = payment_request(limits, "acme")
    for n in range(3):
        await check_customer_limit(acme, f"cus_{n}", ip="203.0.113.7")
    with pytest.raises(errors.RateLimited) as info:
        await check_customer_limit(acme, "cus_9", ip="203.0.113.7")
    assert info.value.code == "ip_rate_limited"
    await check_customer_limit(acme, "cus_9", ip="203.0.113.8")
    await check_customer_limit(acme, "x" * 10_000)  # absurd ids are hashed into a bounded key


async def test_redis_down_fails_open_to_per_process_limits() -> None:
    """Redis unreachable: requests are still served and still limited (per process), and it is counted."""
    metrics = Metrics()
    settings = msgspec.structs.replace(settings_with(), redis_url="redis://127.0.0.1:1/0")
    async with open_storage(settings) as storage:
        limits = RateLimits(settings.limits, storage, metrics)
        try:
            assert not await limits.check_storage()
            assert await drain(limits, "acme", RouteClass.READ, 4) == [2, 1, 0, None]
        finally:
            await limits.close()
    assert metric(metrics.render().decode(), "payhub_rate_limit_storage_errors_total") >= 1


async def test_a_failing_call_falls_back_then_retries_redis_later() -> None:
    metrics = Metrics()
    settings = with_limits(
        msgspec.structs.replace(settings_with(), redis_url="redis://127.0.0.1:1/0"), redis_fallback=0.2
    )
    async with open_storage(settings) as storage:
        limits = RateLimits(settings.limits, storage, metrics)
        try:
            await drain(limits, "acme", RouteClass.READ, 1)
            first = metric(metrics.render().decode(), "payhub_rate_limit_storage_errors_total")
            await drain(limits, "acme", RouteClass.READ, 1)  # within the fallback window: Redis not tried
            assert metric(metrics.render().decode(), "payhub_rate_limit_storage_errors_total") == first
            await asyncio.sleep(0.3)
            await drain(limits, "acme", RouteClass.READ, 1)  # window over: Redis tried (and fails) again
            assert metric(metrics.render().decode(), "payhub_rate_limit_storage_errors_total") == first + 1
        finally:
            await limits.close()


@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter", "fixed-window"])
async def test_every_strategy_limits_on_memory(memory: SweptMemoryStorage, strategy: str) -> None:
    limits = RateLimits(settings_with(strategy=strategy).limits, memory, Metrics())
    outcomes = await drain(limits, "acme", RouteClass.READ, 6)
    assert outcomes.count(None) == 3


@needs_redis
@pytest.mark.parametrize("strategy", ["moving-window", "sliding-window-counter"])
async def test_limiters_sharing_redis_share_one_budget(strategy: str) -> None:
    """Two limiters (as in two processes) on one Redis and prefix draw from one budget."""
    settings = with_limits(
        msgspec.structs.replace(settings_with(strategy=strategy), redis_url=REDIS_URL),
        redis_key_prefix=unique_prefix(),
    )
    async with open_storage(settings) as first_storage, open_storage(settings) as second_storage:
        first = RateLimits(settings.limits, first_storage, Metrics())
        second = RateLimits(settings.limits, second_storage, Metrics())
        assert await first.check_storage()
        outcomes = await drain(first, "acme", RouteClass.READ, 2) + await drain(
            second, "acme", RouteClass.READ, 3
        )
        assert outcomes == [2, 1, 0, None, None]
        await first.close()
        await second.close()


async def test_memory_sweeps_are_throttled(memory: SweptMemoryStorage) -> None:
    limits = RateLimits(settings_with(per_customer="100/minute").limits, memory, Metrics())
    acme = payment_request(limits, "acme")
    await check_customer_limit(acme, "cus_0")
    sweep = memory.timer
    assert sweep is not None
    for n in range(50):
        await check_customer_limit(acme, f"cus_{n}")
    assert memory.timer is sweep  # one sweep per second at most, not one per hit
