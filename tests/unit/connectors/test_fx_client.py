"""The FX feed connector against the FX simulator over real sockets: fresh rates, stale rates."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from config.settings import ConfigError, ConnectorSettings, SandboxSettings, ServerSettings, Settings
from connectors.base import ConnectorUnavailable, InvalidParams
from connectors.fx_feed import FxFeedConnector, StaleRates, fx_feed_from_settings
from connectors.http import OutboundClient
from connectors.sandbox.fx import FxSandbox
from gateway.metrics import Metrics


@pytest.fixture
async def fx(tmp_path: Path) -> AsyncIterator[tuple[FxSandbox, FxFeedConnector]]:
    feed = await FxSandbox(Settings(server=ServerSettings(home=str(tmp_path))), port=0).start()
    settings = Settings(sandbox=SandboxSettings(fx=feed.port))
    async with aiohttp.ClientSession() as session:
        yield feed, fx_feed_from_settings(settings, OutboundClient(session, Metrics()))
    await feed.close()


async def test_fresh_rates(fx: tuple[FxSandbox, FxFeedConnector]) -> None:
    _, connector = fx
    rates = await connector.rates("USD")
    assert rates.base == "USD"
    assert set(rates.rates) == {"CNY", "EUR", "JPY", "GBP", "HKD", "KWD"}
    assert abs(datetime.now(UTC) - rates.as_of) < timedelta(seconds=5)
    assert rates.rate("CNY") > 7
    cny = await connector.rates("CNY")
    assert cny.rate("USD") < 1


async def test_stale_rates_are_refused(fx: tuple[FxSandbox, FxFeedConnector]) -> None:
    feed, connector = fx
    feed.freeze(age_seconds=3600)
    with pytest.raises(StaleRates):
        await connector.rates("USD")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{feed.port}/simulate/freeze", json={}) as reply,
    ):
        assert (await reply.json())["frozen_as_of"] is None
    assert (await connector.rates("USD")).base == "USD"


async def test_bad_bases(fx: tuple[FxSandbox, FxFeedConnector]) -> None:
    _, connector = fx
    with pytest.raises(InvalidParams):
        await connector.rates("usd")
    with pytest.raises(ConnectorUnavailable):
        await connector.rates("XAU")  # the feed does not publish it


def test_max_age_option() -> None:
    settings = Settings(connectors={"fx_feed": ConnectorSettings(options={"max_age_seconds": "5"})})
    connector = fx_feed_from_settings(settings, None)  # type: ignore[arg-type]
    assert connector.max_age == timedelta(seconds=5)
    bad = Settings(connectors={"fx_feed": ConnectorSettings(options={"max_age_seconds": "soon"})})
    with pytest.raises(ConfigError):
        fx_feed_from_settings(bad, None)  # type: ignore[arg-type]
