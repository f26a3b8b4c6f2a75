"""Background loops of the risk engine: USD rates for ``amount_usd``, and expiring challenges.

Both never die: a failed pass is logged and the loop goes on at its interval.
"""

from __future__ import annotations

import asyncio

from connectors.base import ConnectorError
from connectors.fx_feed.client import FxFeedConnector
from gateway.logs import get_logger
from gateway.services.holds import Holds
from gateway.services.risk import UsdRates

log = get_logger("gateway.workers.risk")


async def run_usd_rates(feed: FxFeedConnector, rates: UsdRates, interval: float) -> None:
    """Keep ``rates`` fresh; on a failure keep the last rates (UsdRates drops them when too old)."""
    while True:
        try:
            got = await feed.rates("USD")
            rates.update(got.rates, got.as_of)
        except (ConnectorError, OSError, TimeoutError) as exc:
            log.warning("risk.usd_rates_unavailable", error=type(exc).__name__)
        await asyncio.sleep(interval)


async def run_challenge_expiry(holds: Holds, interval: float) -> None:
    """Fail payments whose step-up challenge expired unanswered (DESIGN §9)."""
    while True:
        try:
            for tenant, payment_id in await holds.expired():
                await holds.expire(tenant, payment_id)
        except Exception as exc:  # the loop never dies; the next pass tries again
            log.warning("risk.challenge_expiry_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
