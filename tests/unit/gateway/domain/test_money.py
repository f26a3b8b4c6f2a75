from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.money import (
    EXPONENTS,
    MAX_AMOUNT,
    Money,
    MoneyError,
    check_amount,
    exponent,
    normalize_currency,
)


def test_exponents_of_well_known_currencies() -> None:
    assert (exponent("JPY"), exponent("usd"), exponent("KWD"), exponent("CNY")) == (0, 2, 3, 2)
    assert len(EXPONENTS) > 150


@pytest.mark.parametrize("code", ["XAU", "XTS", "XXX", "US", "usdd", "", "€"])
def test_unknown_or_non_circulating_codes_are_refused(code: str) -> None:
    with pytest.raises(MoneyError) as info:
        normalize_currency(code)
    assert info.value.param == "currency"


@pytest.mark.parametrize("amount", [0, -1, MAX_AMOUNT + 1, True, 1.5, "100"])
def test_bad_amounts(amount: object) -> None:
    with pytest.raises(MoneyError) as info:
        check_amount(amount)  # type: ignore[arg-type]
    assert info.value.param == "amount"


@given(st.integers(min_value=1, max_value=MAX_AMOUNT), st.sampled_from(sorted(EXPONENTS)))
def test_format_round_trips_minor_units(amount: int, currency: str) -> None:
    text = Money.of(amount, currency.lower()).format()
    number, code = text.split(" ")
    assert code == currency
    assert int(number.replace(".", "")) == amount
    if exponent(currency):
        assert len(number.split(".")[1]) == exponent(currency)
