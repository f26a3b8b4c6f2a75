"""FX feed transformers: decoding into Decimal and the freshness rule (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from connectors.base import ConnectorUnavailable, InvalidParams
from connectors.fx_feed.transformers import Rates, StaleRates, check_base, check_fresh, decode_rates
from connectors.sandbox.fx import USD_RATES, rates_at

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def test_rates_decode_exactly_into_decimal() -> None:
    body = b'{"base":"USD","as_of":"2025-06-01T12:00:00Z","rates":{"CNY":7.123456,"KWD":0.307001}}'
    rates = decode_rates(body, "USD")
    assert rates.rates == {"CNY": Decimal("7.123456"), "KWD": Decimal("0.307001")}
    assert rates.as_of == NOW
    assert rates.rate("USD") == 1
    with pytest.raises(InvalidParams):
        rates.rate("XAU")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"base":"EUR","as_of":"2025-06-01T12:00:00Z","rates":{}}',  # not what we asked for
        b'{"base":"USD","as_of":"2025-06-01T12:00:00","rates":{}}',  # no time zone
        b'{"base":"USD","as_of":"2025-06-01T12:00:00Z","rates":{"CNY":0}}',
        b'{"base":"USD","as_of":"2025-06-01T12:00:00Z","rates":{"CNY":-7.1}}',
        b'{"base":"USD","as_of":"2025-06-01T12:00:00Z","rates":{"cny":7.1}}',
    ],
)
def test_unusable_answers_are_refused(body: bytes) -> None:
    with pytest.raises(ConnectorUnavailable):
        decode_rates(body, "USD")


def test_freshness() -> None:
    rates = Rates("USD", NOW, {"CNY": Decimal("7.1")})
    assert check_fresh(rates, now=NOW + timedelta(seconds=60), max_age=timedelta(seconds=60)) is rates
    with pytest.raises(StaleRates) as stale:
        check_fresh(rates, now=NOW + timedelta(seconds=61), max_age=timedelta(seconds=60))
    assert stale.value.code == "rates_stale"
    assert stale.value.retriable
    with pytest.raises(StaleRates):  # from the future beyond any clock skew
        check_fresh(rates, now=NOW - timedelta(minutes=5), max_age=timedelta(seconds=60))


def test_base_must_be_a_currency_code() -> None:
    assert check_base("USD") == "USD"
    for bad in ("usd", "US", "USD&x=1", ""):
        with pytest.raises(InvalidParams):
            check_base(bad)


def test_sandbox_rates_are_deterministic_with_a_small_wobble() -> None:
    first = rates_at("USD", NOW)
    assert first == rates_at("USD", NOW)
    assert set(first) == set(USD_RATES) - {"USD"}
    for currency, rate in first.items():
        assert abs(rate / USD_RATES[currency] - 1) <= Decimal("0.0011"), currency
    assert rates_at("USD", NOW + timedelta(seconds=15)) != first
    cross = rates_at("CNY", NOW)
    assert abs(cross["USD"] * first["CNY"] - 1) < Decimal("0.00001")
