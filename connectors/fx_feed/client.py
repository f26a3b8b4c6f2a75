"""The FX feed connector: current rates over HTTP, refused when stale.

Not a payment or biller connector, so it is not in the registry (``build_connectors`` accepts only
those). Build it with :func:`fx_feed_from_settings`, or ``FxFeedConnector.create(name, config, deps)``
like any connector. Options (``[connectors.fx_feed]``): ``endpoint`` (default: the sandbox feed) and
``options.max_age_seconds`` (default 60).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from config.settings import ConfigError, ConnectorSettings, Settings
from connectors.base import ConnectorUnavailable
from connectors.fx_feed.transformers import Rates, check_base, check_fresh, decode_rates
from connectors.http import OutboundClient

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps

DEFAULT_NAME = "fx_feed"
DEFAULT_MAX_AGE_SECONDS = 60.0


def _now() -> datetime:
    return datetime.fromtimestamp(time.time(), UTC)


class FxFeedConnector:
    def __init__(
        self,
        name: str,
        config: ConnectorSettings,
        http: OutboundClient,
        *,
        endpoint: str,
        max_age: timedelta,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.name = name
        self._config = config
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self.max_age = max_age
        self._clock = clock

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> FxFeedConnector:
        return cls.from_settings(name, config, deps.settings, deps.http)

    @classmethod
    def from_settings(
        cls, name: str, config: ConnectorSettings, settings: Settings, http: OutboundClient
    ) -> FxFeedConnector:
        raw = config.options.get("max_age_seconds", str(DEFAULT_MAX_AGE_SECONDS))
        try:
            max_age = float(raw)
        except ValueError:
            max_age = -1.0
        if not max_age > 0:
            raise ConfigError(f"connectors.{name}.options.max_age_seconds must be a positive number")
        return cls(
            name,
            config,
            http,
            endpoint=config.endpoint or settings.sandbox.url("fx"),
            max_age=timedelta(seconds=max_age),
        )

    async def rates(self, base: str) -> Rates:
        """Current rates from ``base``; StaleRates if the feed's as_of is older than ``max_age``."""
        check_base(base)
        url = f"{self._endpoint}/rates?{urlencode({'base': base})}"
        reply = await self._http.request(self.name, self._config, "rates", "GET", url, idempotent=True)
        if reply.status != 200:
            raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on rates")
        return check_fresh(decode_rates(reply.body, base), now=self._clock(), max_age=self.max_age)


def fx_feed_from_settings(
    settings: Settings, http: OutboundClient, name: str = DEFAULT_NAME
) -> FxFeedConnector:
    """The FX feed as configured in ``[connectors.<name>]`` (all defaults when the section is absent)."""
    config = settings.connectors.get(name, ConnectorSettings())
    return FxFeedConnector.from_settings(name, config, settings, http)
