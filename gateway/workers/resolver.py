"""Background loop that settles attempts whose outcome at the connector is not known yet.

It never dies: a pass that fails (the database away, a bug) is logged and counted, and the loop
goes on. /readyz reports the resolver stalled when no pass completed for ``STALL_AFTER`` seconds.
"""

from __future__ import annotations

import asyncio

from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.services.resolver import Resolver

log = get_logger("gateway.workers.resolver")

STALL_AFTER = 60.0


async def run_resolver(resolver: Resolver, interval: float, metrics: Metrics) -> None:
    while True:
        try:
            while await resolver.resolve_due() > 0:
                pass  # keep going while there is a backlog
            metrics.resolver_passes.labels("ok").inc()
        except Exception as exc:
            metrics.resolver_passes.labels("error").inc()
            log.warning("resolver.failed", error=type(exc).__name__)
        metrics.resolver_last_pass_age.set(resolver.health.age())
        await asyncio.sleep(interval)
