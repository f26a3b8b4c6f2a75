"""Load shedding order (reads first, payment writes last) and the event-loop lag monitor."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from config.settings import SheddingSettings, ShedThreshold
from gateway import errors
from gateway.metrics import Metrics
from gateway.traffic.classes import RouteClass
from gateway.traffic.concurrency import ConcurrencyLimiter
from gateway.traffic.shedding import LoadShedder
from tests.support.traffic import metric

SETTINGS = SheddingSettings(
    read=ShedThreshold(lag=0.1, inflight=10),
    write=ShedThreshold(lag=0.25, inflight=20),
    payment_write=ShedThreshold(lag=1.0, inflight=30),
)


def shed_classes(shedder: LoadShedder) -> set[RouteClass]:
    refusals: dict[RouteClass, errors.Unavailable] = {}
    for route_class in RouteClass:
        try:
            shedder.check(route_class)
        except errors.Unavailable as exc:
            refusals[route_class] = exc
    for exc in refusals.values():
        assert (exc.status, exc.code, exc.headers["Retry-After"]) == (503, "overloaded", "1")
    return set(refusals)


@pytest.mark.parametrize(
    ("in_flight", "expected"),
    [
        (0, set()),
        (9, set()),
        (10, {RouteClass.READ}),
        (20, {RouteClass.READ, RouteClass.WRITE, RouteClass.OPS}),
        (30, set(RouteClass)),
    ],
)
def test_in_flight_sheds_by_criticality(in_flight: int, expected: set[RouteClass]) -> None:
    shedder = LoadShedder(SETTINGS, Metrics())
    shedder.in_flight = in_flight
    assert shed_classes(shedder) == expected


@pytest.mark.parametrize(
    ("lag", "expected"),
    [
        (0.0, set()),
        (0.1, {RouteClass.READ}),
        (0.3, {RouteClass.READ, RouteClass.WRITE, RouteClass.OPS}),
        (1.5, set(RouteClass)),
    ],
)
def test_lag_sheds_by_criticality(lag: float, expected: set[RouteClass]) -> None:
    shedder = LoadShedder(SETTINGS, Metrics())
    shedder.lag = lag
    assert shed_classes(shedder) == expected


def test_disabled_never_sheds_and_refusals_are_counted() -> None:
    metrics = Metrics()
    off = LoadShedder(SheddingSettings(enabled=False, read=ShedThreshold(lag=0.1, inflight=0)), metrics)
    assert shed_classes(off) == set()
    on = LoadShedder(SETTINGS, metrics)
    on.in_flight = 10
    shed_classes(on)
    text = metrics.render().decode()
    assert metric(text, "payhub_shed_requests_total", route_class="read") == 1
    assert metric(text, "payhub_shed_requests_total", route_class="payment_write") == 0


def test_one_stall_is_smoothed_sustained_lag_is_not() -> None:
    shedder = LoadShedder(SETTINGS, Metrics())
    shedder.record_lag(0.2)
    assert shedder.lag < SETTINGS.read.lag  # one GC-sized pause does not shed reads
    for _ in range(20):
        shedder.record_lag(0.2)
    assert shedder.lag > SETTINGS.read.lag
    for _ in range(40):
        shedder.record_lag(0.0)
    assert shedder.lag < 0.01  # and it recovers


async def test_monitor_sees_a_blocked_loop() -> None:
    metrics = Metrics()
    shedder = LoadShedder(SheddingSettings(lag_interval=0.01), metrics)
    task = asyncio.create_task(shedder.monitor())
    try:
        for _ in range(6):
            await asyncio.sleep(0.02)
            time.sleep(0.1)  # noqa: ASYNC251 - blocking the loop on purpose
        assert shedder.lag > 0.03
        assert metric(metrics.render().decode(), "payhub_event_loop_lag_seconds") > 0.03
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_concurrency_limit_per_tenant() -> None:
    limiter = ConcurrencyLimiter(lambda tenant: 2 if tenant == "acme" else 5)
    limiter.acquire("acme")
    limiter.acquire("acme")
    with pytest.raises(errors.RateLimited) as info:
        limiter.acquire("acme")
    assert (info.value.status, info.value.code) == (429, "too_many_concurrent_requests")
    assert info.value.headers["Retry-After"] == "1"
    limiter.acquire("globex")  # another tenant is not affected
    limiter.release("acme")
    limiter.acquire("acme")
    assert limiter.in_flight("acme") == 2
    for _ in range(2):
        limiter.release("acme")
    assert limiter.in_flight("acme") == 0
