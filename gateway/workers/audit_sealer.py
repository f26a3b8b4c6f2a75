"""Background loop that seals committed audit events into the signed hash chain."""

from __future__ import annotations

import asyncio

import asyncpg

from crypto.audit_chain import SealKey
from gateway.logs import get_logger
from gateway.store.audit import seal_batch

log = get_logger("gateway.workers.audit_sealer")


async def seal_pending(pool: asyncpg.Pool, key: SealKey) -> int:
    """Seal until caught up; returns how many events were sealed."""
    total = 0
    async with pool.acquire() as conn:
        while True:
            result = await seal_batch(conn, key)
            total += result.sealed
            if not result.full_batch:
                return total


async def run_sealer(pool: asyncpg.Pool, key: SealKey, interval: float) -> None:
    """Seal every ``interval`` seconds. Any number of gateways may run this: a lock elects one per round."""
    while True:
        try:
            sealed = await seal_pending(pool, key)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("audit.seal_failed", error=type(exc).__name__)
        else:
            if sealed:
                log.debug("audit.sealed", events=sealed)
        await asyncio.sleep(interval)
