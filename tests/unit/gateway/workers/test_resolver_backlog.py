"""The resolver loop measures the oldest processing payment, throttled, and survives failing to."""

from __future__ import annotations

import asyncio

from gateway.metrics import Metrics
from gateway.services.resolver import ResolverHealth
from gateway.workers.resolver import run_resolver


class FakeResolver:
    def __init__(self, ages: list[float | Exception]) -> None:
        self.health = ResolverHealth()
        self.ages = ages
        self.measures = 0
        self.passes = 0

    async def resolve_due(self, *, limit: int = 50) -> int:
        self.passes += 1
        self.health.passed()
        return 0

    async def oldest_processing_age(self) -> float:
        age = self.ages[min(self.measures, len(self.ages) - 1)]
        self.measures += 1
        if isinstance(age, Exception):
            raise age
        return age

    async def manual_review_size(self) -> int:
        return 3


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


async def run_for(resolver: FakeResolver, metrics: Metrics, seconds: float, backlog_every: float) -> None:
    task = asyncio.create_task(run_resolver(resolver, 0.01, metrics, backlog_every=backlog_every))
    await asyncio.sleep(seconds)
    task.cancel()


async def test_the_first_pass_sets_the_gauge_then_at_most_every_backlog_every() -> None:
    metrics, resolver = Metrics(), FakeResolver([42.0])
    await run_for(resolver, metrics, 0.3, backlog_every=10.0)
    assert resolver.passes > 5
    assert resolver.measures == 1  # throttled: not once per pass
    assert gauge(metrics, "payhub_oldest_processing_payment_age_seconds") == 42.0
    assert gauge(metrics, "payhub_manual_review_attempts") == 3


async def test_a_failed_measure_keeps_the_last_value_and_the_loop_goes_on() -> None:
    metrics, resolver = Metrics(), FakeResolver([7.0, ConnectionError("db away")])
    await run_for(resolver, metrics, 0.3, backlog_every=0.02)
    assert resolver.measures > 2
    assert gauge(metrics, "payhub_oldest_processing_payment_age_seconds") == 7.0
    assert resolver.passes > 5
