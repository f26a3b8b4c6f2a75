"""FX feed simulator (DESIGN §3 port 9706, §8): current rates over HTTP, with a stale-rates knob.

API (JSON over HTTP; fault knobs at ``POST /faults``)::

    GET  /rates?base=USD        → 200 {"base": "USD", "as_of": "<RFC 3339>", "rates": {"CNY": 7.1023, …}}
                                → 400 {error: "unsupported_base"}
    POST /simulate/freeze       {"age_seconds": 3600} or {"as_of": "<RFC 3339>"}: stale rates from now on;
                                {} thaws (as_of is "now" again)

Rates cover CNY, USD, EUR, JPY, GBP, HKD and KWD. Each is a fixed mid rate against USD plus a wobble
of at most ±0.1 % that follows the clock (one cycle a minute), so two reads a few seconds apart differ
a little while the value for a given ``as_of`` is deterministic. Cross rates go through USD. Rates are
JSON numbers with 6 decimal places (the connector decodes them straight into ``Decimal``).
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Final

import msgspec
from aiohttp import web

from config.settings import Settings
from connectors.sandbox.common import AppSimulator, decode_body, error_response

# Units of each currency per 1 USD (mid rates).
USD_RATES: Final[dict[str, Decimal]] = {
    "USD": Decimal(1),
    "CNY": Decimal("7.1000"),
    "EUR": Decimal("0.9200"),
    "JPY": Decimal("151.00"),
    "GBP": Decimal("0.7900"),
    "HKD": Decimal("7.8000"),
    "KWD": Decimal("0.3070"),
}
WOBBLE: Final = 0.001  # ±0.1 %
WOBBLE_PERIOD: Final = 60.0  # seconds
PLACES: Final = Decimal("0.000001")

_ENCODER = msgspec.json.Encoder(decimal_format="number")


class FreezeIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    age_seconds: Annotated[float, msgspec.Meta(ge=0)] | None = None
    as_of: datetime | None = None


def _wobble(currency: str, timestamp: int) -> Decimal:
    """A deterministic factor in [1 - WOBBLE, 1 + WOBBLE]; each currency has its own phase."""
    phase = sum(currency.encode()) / 10.0
    return Decimal(1 + WOBBLE * math.sin(2 * math.pi * timestamp / WOBBLE_PERIOD + phase)).quantize(
        Decimal("0.0000001")
    )


def rates_at(base: str, as_of: datetime) -> dict[str, Decimal]:
    """Units of each currency per unit of ``base`` at ``as_of`` (the rule the feed publishes)."""
    timestamp = int(as_of.timestamp())
    usd = {c: rate * (_wobble(c, timestamp) if c != "USD" else 1) for c, rate in USD_RATES.items()}
    return {
        currency: (rate / usd[base]).quantize(PLACES, rounding=ROUND_HALF_EVEN)
        for currency, rate in usd.items()
        if currency != base
    }


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class FxSandbox(AppSimulator):
    """The feed. ``frozen_as_of`` (public) pins the published as_of: set it in the past for stale rates.
    It keeps no records: a restart that forgets changes nothing."""

    def __init__(self, settings: Settings, *, host: str | None = None, port: int | None = None) -> None:
        super().__init__(settings, service="fx", host=host, port=port)
        self.frozen_as_of: datetime | None = None
        self.app.router.add_get("/rates", self._rates)
        self.app.router.add_post("/simulate/freeze", self._freeze)

    def freeze(self, *, age_seconds: float | None = None, as_of: datetime | None = None) -> None:
        """Publish rates as of a fixed moment (``age_seconds`` ago, or ``as_of``); no argument thaws."""
        if as_of is not None:
            self.frozen_as_of = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
        elif age_seconds is not None:
            self.frozen_as_of = self.now() - timedelta(seconds=age_seconds)
        else:
            self.frozen_as_of = None

    @staticmethod
    def now() -> datetime:
        return datetime.fromtimestamp(int(time.time()), UTC)

    async def _rates(self, request: web.Request) -> web.Response:
        base = request.query.get("base", "USD").upper()
        if base not in USD_RATES:
            return error_response(400, "unsupported_base", f"supported: {', '.join(sorted(USD_RATES))}")
        as_of = self.frozen_as_of or self.now()
        body = {"base": base, "as_of": _rfc3339(as_of), "rates": rates_at(base, as_of)}
        return web.Response(body=_ENCODER.encode(body), content_type="application/json")

    async def _freeze(self, request: web.Request) -> web.Response:
        params: FreezeIn = await decode_body(request, FreezeIn)
        self.freeze(age_seconds=params.age_seconds, as_of=params.as_of)
        frozen = _rfc3339(self.frozen_as_of) if self.frozen_as_of is not None else None
        return web.json_response({"frozen_as_of": frozen})


async def start(settings: Settings) -> FxSandbox:
    return await FxSandbox(settings).start()
