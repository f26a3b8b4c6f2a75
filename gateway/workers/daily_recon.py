"""The daily reconciliation job: each biller's previous business day, once, by one process.

Every hour it looks for billers whose previous day (in the biller's time zone, after its cut-off
at midnight) has no reconciliation run yet and runs it; a session advisory lock per biller keeps
several gateway processes from running the same one. A biller that is down is tried again next
round. ``payhub recon run`` does the same on demand.
"""

from __future__ import annotations

import asyncio
import zlib
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import asyncpg

from connectors.base import ConnectorError
from gateway.logs import get_logger
from gateway.services.billers import BillerCatalog
from gateway.services.recon import reconcile

log = get_logger("gateway.workers.daily_recon")

_LOCK_BASE = 0x7061796875620100  # "payhub" + 0x100; one lock id per biller above it


async def reconcile_due(pool: asyncpg.Pool, catalog: BillerCatalog) -> int:
    """Run every biller's missing run for its previous business day; return how many ran."""
    ran = 0
    for biller in catalog.list():
        day = datetime.now(ZoneInfo(biller.timezone)).date() - timedelta(days=1)
        lock = _LOCK_BASE + zlib.crc32(biller.id.encode())
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock):
                continue  # another process is on it
            try:
                done = await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM recon_runs WHERE biller = $1 AND day = $2)", biller.id, day
                )
                if done:
                    continue
                _, connector = catalog.connector(biller.id)
                result = await reconcile(pool, connector, biller.id, day, timezone=biller.timezone)
                ran += 1
                log.info("recon.daily", biller=biller.id, day=str(day), summary=result.line())
            except ConnectorError as exc:
                log.warning("recon.daily_failed", biller=biller.id, day=str(day), error=type(exc).__name__)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", lock)
    return ran


async def run_daily_recon(
    pool: asyncpg.Pool, catalog: BillerCatalog, interval: float, *, first_after: float = 60.0
) -> None:
    # Not at the very start: a gateway that just started has better things to do first.
    await asyncio.sleep(first_after)
    while True:
        try:
            await reconcile_due(pool, catalog)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("recon.daily_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
