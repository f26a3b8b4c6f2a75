"""Background loop that seals committed audit events into the signed hash chain.

After each round it measures what is left unsealed (``payhub_audit_unsealed_events``,
``payhub_audit_seal_lag_seconds``), whether this process sealed, another one did or sealing failed,
so the alert on a sealer falling behind sees the backlog grow in every case.
"""

from __future__ import annotations

import asyncio

import asyncpg

from crypto.audit_chain import SealKey
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.store.audit import seal_backlog, seal_batch

log = get_logger("gateway.workers.audit_sealer")

_DATABASE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


async def seal_pending(pool: asyncpg.Pool, key: SealKey) -> int:
    """Seal until caught up; returns how many events were sealed."""
    total = 0
    async with pool.acquire() as conn:
        while True:
            result = await seal_batch(conn, key)
            total += result.sealed
            if not result.full_batch:
                return total


async def measure_backlog(pool: asyncpg.Pool, metrics: Metrics) -> None:
    """Set the sealing gauges from one query; on a database error they keep their last values."""
    try:
        async with pool.acquire() as conn:
            backlog = await seal_backlog(conn)
    except _DATABASE_ERRORS as exc:
        log.warning("audit.backlog_failed", error=type(exc).__name__)
        return
    metrics.audit_unsealed_events.set(backlog.events)
    metrics.audit_seal_lag.set(backlog.oldest_age)


async def run_sealer(pool: asyncpg.Pool, key: SealKey, interval: float, metrics: Metrics) -> None:
    """Seal every ``interval`` seconds. Any number of gateways may run this: a lock elects one per round."""
    while True:
        try:
            sealed = await seal_pending(pool, key)
        except _DATABASE_ERRORS as exc:
            log.warning("audit.seal_failed", error=type(exc).__name__)
        else:
            if sealed:
                log.debug("audit.sealed", events=sealed)
        await measure_backlog(pool, metrics)
        await asyncio.sleep(interval)
