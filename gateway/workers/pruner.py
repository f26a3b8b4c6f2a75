"""Background loop that deletes idempotency keys past their retention (≥ 24 h by contract) and
velocity buckets no risk window reads any more."""

from __future__ import annotations

import asyncio

import asyncpg

from gateway.logs import get_logger
from gateway.store.idempotency import prune
from gateway.store.risk import prune_counters

log = get_logger("gateway.workers.pruner")

# Keys are kept twice the promised 24 h: a client retrying near the promise still gets its replay.
RETENTION_HOURS = 48.0


async def run_pruner(pool: asyncpg.Pool, interval: float) -> None:
    while True:
        try:
            # Batches of 1000 on a fresh connection each: requests get the pool in between.
            for step in (lambda c: prune(c, older_than_hours=RETENTION_HOURS), prune_counters):
                deleted = 1
                while deleted:
                    async with pool.acquire() as conn:
                        deleted = await step(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("pruner.failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
