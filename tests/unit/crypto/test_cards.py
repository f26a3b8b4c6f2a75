"""Card helpers: Luhn, brand ranges, PAN validation (errors never echo the PAN), expiry, display data."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.cards import (
    CardDisplay,
    card_brand,
    luhn_valid,
    normalize_pan,
    validate_expiry,
    validate_pan,
)

TEST_PANS = {
    "4111111111111111": "visa",
    "5555555555554444": "mastercard",
    "6212345678901265": "unionpay",
    "378282246310005": "amex",
}
TODAY = dt.date(2025, 6, 15)


def _with_check_digit(body: str) -> str:
    for check in "0123456789":
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("no Luhn check digit")


@pytest.mark.parametrize(("pan", "brand"), TEST_PANS.items())
def test_test_pans(pan: str, brand: str) -> None:
    assert luhn_valid(pan)
    assert card_brand(pan) == brand
    assert validate_pan(pan) == pan


@pytest.mark.parametrize(
    ("prefix", "brand"),
    [
        ("4", "visa"),
        ("51", "mastercard"),
        ("55", "mastercard"),
        ("2221", "mastercard"),
        ("2720", "mastercard"),
        ("2220", "unknown"),
        ("2721", "unknown"),
        ("34", "amex"),
        ("37", "amex"),
        ("35", "unknown"),
        ("62", "unionpay"),
        ("6011", "discover"),
        ("644", "discover"),
        ("649", "discover"),
        ("65", "discover"),
        ("643", "unknown"),
        ("3528", "jcb"),
        ("3589", "jcb"),
        ("3527", "unknown"),
        ("3590", "unknown"),
        ("1", "unknown"),
        ("", "unknown"),
    ],
)
def test_brand_ranges(prefix: str, brand: str) -> None:
    pan = _with_check_digit(prefix + "0" * (15 - len(prefix))) if prefix else ""
    assert card_brand(pan) == brand


def test_separators_are_dropped() -> None:
    assert normalize_pan("4111 1111-1111 1111") == "4111111111111111"
    assert validate_pan(" 4111-1111-1111-1111 ") == "4111111111111111"
    assert card_brand("5555 5555 5555 4444") == "mastercard"


@given(st.text(alphabet="0123456789", min_size=11, max_size=18), st.data())
def test_luhn_detects_every_single_digit_error(body: str, data: st.DataObject) -> None:
    pan = _with_check_digit(body)
    assert luhn_valid(pan)
    assert validate_pan(pan) == pan
    index = data.draw(st.integers(0, len(pan) - 1))
    wrong = data.draw(st.sampled_from([d for d in "0123456789" if d != pan[index]]))
    assert not luhn_valid(pan[:index] + wrong + pan[index + 1 :])


@pytest.mark.parametrize(
    ("pan", "why"),
    [
        ("4111111111111112", "Luhn"),
        ("41111111111", "12 to 19 digits"),
        ("41111111111111111111", "12 to 19 digits"),
        ("4111x11111111111", "only digits"),
        ("4111\u0661111111111111", "only digits"),  # an Arabic-Indic one passes str.isdigit
        ("\u00b9111111111111111", "only digits"),  # superscript one
        ("", "only digits"),
    ],
)
def test_invalid_pans_are_refused_without_echoing(pan: str, why: str) -> None:
    with pytest.raises(ValueError, match=why) as info:
        validate_pan(pan)
    message = str(info.value)
    assert pan not in message or not pan
    assert "1111" not in message


def test_non_string_pan() -> None:
    with pytest.raises(TypeError):
        validate_pan(4111111111111111)  # type: ignore[arg-type]


def test_expiry() -> None:
    assert validate_expiry(6, 2025, TODAY) == (6, 2025)  # valid through the end of its month
    assert validate_expiry(1, 30, TODAY) == (1, 2030)
    assert validate_expiry(12, 2045, TODAY) == (12, 2045)
    with pytest.raises(ValueError, match="expired"):
        validate_expiry(5, 2025, TODAY)
    with pytest.raises(ValueError, match="expired"):
        validate_expiry(12, 2024, TODAY)
    with pytest.raises(ValueError, match="between 1 and 12"):
        validate_expiry(13, 2026, TODAY)
    with pytest.raises(ValueError, match="between 1 and 12"):
        validate_expiry(0, 2026, TODAY)
    with pytest.raises(ValueError, match="years ahead"):
        validate_expiry(1, 2046, TODAY)
    with pytest.raises(TypeError):
        validate_expiry(True, 2026, TODAY)
    with pytest.raises(TypeError):
        validate_expiry(1, "2026", TODAY)  # type: ignore[arg-type]


def test_display() -> None:
    display = CardDisplay.from_pan("4111 1111 1111 1111", 12, 2030)
    assert display == CardDisplay("visa", "411111", "1111", 12, 2030)
    assert display.masked == "411111******1111"
    amex = CardDisplay.from_pan("378282246310005", 1, 2031)
    assert (amex.brand, amex.bin, amex.last4) == ("amex", "378282", "0005")
