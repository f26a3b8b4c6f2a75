"""FX feed wire format ↔ core types, and the freshness rule: pure and I/O-free.

The feed (the sandbox in ``connectors/sandbox/fx.py`` speaks it)::

    GET /rates?base=USD → 200 {"base": "USD", "as_of": "<RFC 3339>", "rates": {"CNY": 7.1023, …}}

Rates are JSON numbers decoded straight into ``Decimal`` (never through ``float``): ``rates[X]`` is
how many units of X one unit of ``base`` buys. Rates older than the configured maximum age are
refused (:class:`StaleRates`), because a quote locks a rate for the payer: a stale one is a
mispriced payment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

import msgspec

from connectors.base import ConnectorError, ConnectorUnavailable, InvalidParams

CURRENCY: Final = re.compile(r"^[A-Z]{3}$")
# A feed's clock may run a little ahead of ours; further ahead than this, its as_of is not believable.
MAX_CLOCK_SKEW: Final = timedelta(seconds=5)


class StaleRates(ConnectorError):
    """The feed answered, but its rates are older than the maximum age (or dated in the future)."""

    retriable = True
    code = "rates_stale"


class RatesReply(msgspec.Struct, frozen=True):
    base: str
    as_of: datetime
    rates: dict[str, Decimal]


@dataclass(frozen=True, slots=True)
class Rates:
    base: str
    as_of: datetime  # timezone-aware
    rates: dict[str, Decimal]

    def rate(self, quote: str) -> Decimal:
        """Units of ``quote`` per unit of ``base``; InvalidParams if the feed has no such rate."""
        if quote == self.base:
            return Decimal(1)
        try:
            return self.rates[quote]
        except KeyError:
            raise InvalidParams(f"no {self.base}/{quote} rate") from None


def check_base(base: str) -> str:
    if not CURRENCY.match(base):
        raise InvalidParams(f"base must be an ISO 4217 code, got {base!r}")
    return base


def decode_rates(body: bytes, base: str) -> Rates:
    """The feed's answer → Rates, refusing anything we could misprice with (ConnectorUnavailable)."""
    try:
        reply = msgspec.json.decode(body, type=RatesReply)
    except msgspec.DecodeError as exc:
        raise ConnectorUnavailable(f"fx feed: unreadable rates ({exc})") from exc
    if reply.base != base:
        raise ConnectorUnavailable(f"fx feed: asked for {base} rates, got {reply.base}")
    if reply.as_of.tzinfo is None:
        raise ConnectorUnavailable("fx feed: as_of has no time zone")
    for currency, rate in reply.rates.items():
        if not CURRENCY.match(currency) or not rate.is_finite() or rate <= 0:
            raise ConnectorUnavailable(f"fx feed: invalid rate {currency}={rate}")
    return Rates(reply.base, reply.as_of, dict(reply.rates))


def check_fresh(rates: Rates, *, now: datetime, max_age: timedelta) -> Rates:
    """Return ``rates`` if their as_of is within ``max_age`` of ``now``; else raise StaleRates."""
    age = now - rates.as_of
    if age > max_age:
        raise StaleRates(
            f"{rates.base} rates are {age.total_seconds():.0f} s old (max {max_age.total_seconds():.0f} s)"
        )
    if -age > MAX_CLOCK_SKEW:
        raise StaleRates(f"{rates.base} rates are dated {-age.total_seconds():.0f} s in the future")
    return rates
