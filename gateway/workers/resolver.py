"""Background loop that settles attempts whose outcome at the connector is not known yet.

It never dies: a pass that fails (the database away, a bug) is logged and counted, and the loop
goes on. /readyz reports the resolver stalled when no pass completed for ``STALL_AFTER`` seconds.
It also measures how long the oldest ``processing`` payment has waited and how many attempts wait
in the manual queue, for the metrics (and their alerts): two index probes every ``BACKLOG_EVERY``
seconds, nothing on the payment path.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol

from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.services.resolver import ResolverHealth

log = get_logger("gateway.workers.resolver")

STALL_AFTER = 60.0
BACKLOG_EVERY = 5.0  # seconds between two measures of the oldest processing payment


class ResolverLike(Protocol):
    health: ResolverHealth

    async def resolve_due(self, *, limit: int = ...) -> int: ...

    async def oldest_processing_age(self) -> float: ...

    async def manual_review_size(self) -> int: ...


async def run_resolver(
    resolver: ResolverLike, interval: float, metrics: Metrics, *, backlog_every: float = BACKLOG_EVERY
) -> None:
    measured = -math.inf
    while True:
        try:
            while await resolver.resolve_due() > 0:
                pass  # keep going while there is a backlog
            metrics.resolver_passes.labels("ok").inc()
        except Exception as exc:
            metrics.resolver_passes.labels("error").inc()
            log.warning("resolver.failed", error=type(exc).__name__)
        metrics.resolver_last_pass_age.set(resolver.health.age())
        if time.monotonic() - measured >= backlog_every:
            measured = time.monotonic()
            await _measure_backlog(resolver, metrics)
        await asyncio.sleep(interval)


async def _measure_backlog(resolver: ResolverLike, metrics: Metrics) -> None:
    try:
        age = await resolver.oldest_processing_age()
        queued = await resolver.manual_review_size()
    except Exception as exc:  # the gauges keep their last value; the pass counter says the DB is away
        log.warning("resolver.backlog_failed", error=type(exc).__name__)
    else:
        metrics.oldest_processing_payment_age.set(age)
        metrics.manual_review_attempts.set(queued)
