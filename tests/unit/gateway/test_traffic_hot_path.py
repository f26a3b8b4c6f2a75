"""What the traffic checks do once instead of per request: limit strings parsed, storage keys built,
refusal counters bound; and limits' memory storage called through one error wrapper, not two."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from limits import parse, parse_many
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.limits import GRANULARITIES

from config.settings import DEFAULT_CONFIG, TenantRates, load_settings
from gateway.metrics import Metrics
from gateway.traffic import ratelimit
from gateway.traffic.classes import RouteClass
from gateway.traffic.concurrency import ConcurrencyLimiter
from gateway.traffic.middleware import BODY_REFUSALS, Traffic
from gateway.traffic.protocol import HEAD_REFUSALS, refusal_counters
from gateway.traffic.ratelimit import RateLimits, SweptMemoryStorage
from gateway.traffic.shedding import LoadShedder
from tests.support.traffic import metric, with_limits

DEV = load_settings(DEFAULT_CONFIG, env={})
RATES = TenantRates(payment_write="50/2 seconds;100/hour", default="30/minute")


@pytest.fixture
async def memory() -> AsyncIterator[SweptMemoryStorage]:
    storage = SweptMemoryStorage()
    yield storage
    await storage.close()


def test_items_remember_their_keys_and_stay_the_same_limits() -> None:
    granularities = dict(GRANULARITIES)
    items = ratelimit._items("5/2 seconds;100/hour;7/day")
    assert items is not None
    plain = parse_many("5/2 seconds;100/hour;7/day")
    assert list(items) == plain
    assert [hash(item) for item in items] == [hash(item) for item in plain]
    for item, reference in zip(items, plain, strict=True):
        for ids in (
            ("tenant", "acme", "default"),
            ("customer", "acme", "cus_1"),
            ("customer_ip", "a", "::1"),
        ):
            assert item.key_for(*ids) == reference.key_for(*ids)
            assert item.key_for(*ids) == reference.key_for(*ids)  # remembered: the same answer
    assert dict(GRANULARITIES) == granularities  # the subclasses are not registered as granularities
    assert type(parse("5/second")).__name__ == "RateLimitItemPerSecond"


def test_remembered_keys_are_bounded() -> None:
    [item] = ratelimit._items("10/minute") or ()
    for n in range(ratelimit._MAX_KEYS * 2 + 5):
        item.key_for("customer", "acme", f"cus_{n}")
    assert len(item._keys) <= ratelimit._MAX_KEYS  # type: ignore[attr-defined]


async def test_limit_strings_are_parsed_once(
    memory: SweptMemoryStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = RateLimits(with_limits(DEV, per_tenant=RATES).limits, memory, Metrics())
    parsed: list[str] = []
    real = ratelimit.parse_many

    def counting(rate: str) -> list[object]:
        parsed.append(rate)
        return real(rate)

    monkeypatch.setattr(ratelimit, "parse_many", counting)
    for _ in range(5):
        await limits.check_tenant("acme", RouteClass.PAYMENT_WRITE)
        await limits.check_tenant("acme", RouteClass.READ)
        await limits.check_payer("acme", "cus_1", "203.0.113.7")
    assert parsed == ["50/2 seconds;100/hour", "30/minute"]  # each budget on its first request only


@pytest.mark.parametrize("strategy", [SlidingWindowCounterRateLimiter, MovingWindowRateLimiter])
async def test_the_storage_sees_the_keys_limits_would_build(
    memory: SweptMemoryStorage, strategy: type[SlidingWindowCounterRateLimiter]
) -> None:
    [item] = ratelimit._items("3/minute") or ()
    limiter = strategy(memory)
    for _ in range(4):
        await limiter.hit(item, "tenant", "acme", "default")
    reference = strategy(memory)
    stats = await reference.get_window_stats(parse("3/minute"), "tenant", "acme", "default")
    assert stats.remaining == 0  # the plain item reads the counters the remembering item wrote


def test_memory_storage_methods_are_called_without_limits_error_wrapper() -> None:
    for name in ("incr", "get", "get_expiry", "check", "reset", "clear"):
        method = getattr(SweptMemoryStorage, name)
        assert not hasattr(method, "__wrapped__")
        assert method is getattr(MemoryStorage, name).__wrapped__  # MemoryStorage's own function
    assert "close" in vars(SweptMemoryStorage)  # its own methods stay
    assert SweptMemoryStorage().wrap_exceptions is False  # what the wrapper would have checked


def test_refusal_counters_are_bound_at_start_up(memory: SweptMemoryStorage) -> None:
    metrics = Metrics()
    settings = with_limits(DEV, per_tenant=RATES)
    rates = RateLimits(settings.limits, memory, metrics)
    Traffic(
        rates,
        ConcurrencyLimiter(lambda _: 5),
        LoadShedder(settings.limits.shedding, metrics),
        settings.limits.input,
        settings.server.max_body_bytes,
        metrics,
    )
    refusal_counters(metrics)
    text = metrics.render().decode()
    for route_class in RouteClass:
        for limiter in ("tenant", "concurrency"):
            labels = f'limiter="{limiter}",route_class="{route_class.value}"'
            assert f"payhub_rate_limited_requests_total{{{labels}}} 0.0" in text
        assert f'payhub_shed_requests_total{{route_class="{route_class.value}"}} 0.0' in text
    for limiter in ("customer", "customer_ip"):
        assert metric(text, "payhub_rate_limited_requests_total", limiter=limiter) == 0
        assert f'limiter="{limiter}",route_class="payment_write"' in text
    for reason in (*BODY_REFUSALS, *HEAD_REFUSALS):
        assert f'payhub_refused_requests_total{{reason="{reason}"}} 0.0' in text
