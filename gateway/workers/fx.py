"""Keeps the FX rates fresh from the FX feed (DESIGN §8 ``fx_feed``), for quotes and for risk's
``amount_usd``. The loop never dies: on a failure it keeps the last rates, which age until quotes
refuse them (503 ``rates_stale``) and risk stops using them."""

from __future__ import annotations

import asyncio

from connectors.base import ConnectorError
from connectors.fx_feed.client import FxFeedConnector
from gateway.logs import get_logger
from gateway.services.fx import FxRates

log = get_logger("gateway.workers.fx")


async def run_fx_rates(feed: FxFeedConnector, rates: FxRates, interval: float) -> None:
    while True:
        try:
            got = await feed.rates("USD")
            rates.update(got.rates, got.as_of)
        except (ConnectorError, OSError, TimeoutError) as exc:
            log.warning("fx.rates_unavailable", error=type(exc).__name__)
        await asyncio.sleep(interval)
