"""Background loop of the risk engine: expiring challenges.

It never dies: a failed pass is logged and the loop goes on at its interval.
"""

from __future__ import annotations

import asyncio

from gateway.logs import get_logger
from gateway.services.holds import Holds

log = get_logger("gateway.workers.risk")


async def run_challenge_expiry(holds: Holds, interval: float) -> None:
    """Fail payments whose step-up challenge expired unanswered (DESIGN §9)."""
    while True:
        try:
            for tenant, payment_id in await holds.expired():
                await holds.expire(tenant, payment_id)
        except Exception as exc:  # the loop never dies; the next pass tries again
            log.warning("risk.challenge_expiry_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
