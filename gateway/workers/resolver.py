"""Background loop that settles payments whose outcome at the connector is not known yet."""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.logs import get_logger
from gateway.services.payments import PaymentService

log = get_logger("gateway.workers.resolver")


async def run_resolver(service: PaymentService, interval: float) -> None:
    while True:
        try:
            while await service.resolve_due() > 0:
                pass  # keep going while there is a backlog
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("resolver.failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
