"""Card number helpers: normalisation, Luhn, brand by IIN range, display data, expiry checks.

Pure functions, no I/O. Every error message is safe to log: it never contains the card number
(DESIGN §7: no full PAN in any log, event or error), only what is wrong with it.

Design notes:

* Only ASCII digits count as digits. ``str.isdigit`` also accepts e.g. Arabic-Indic or superscript
  digits, which would slip past validation and then be stored or sent to a connector as-is.
* Brand detection uses the common IIN ranges; it is display and routing data, not a validation step,
  so an unknown range is ``"unknown"`` rather than an error.
* The BIN kept for display is the first 6 digits (the ``card_tokens.bin`` column is 6 digits).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Brand",
    "CardDisplay",
    "card_brand",
    "luhn_valid",
    "normalize_pan",
    "validate_expiry",
    "validate_pan",
]

Brand = Literal["visa", "mastercard", "amex", "unionpay", "discover", "jcb", "unknown"]

PAN_MIN_DIGITS = 12
PAN_MAX_DIGITS = 19
# Cards are issued for at most ~10 years; 20 leaves room without accepting typos like 2204 for 2024.
_MAX_YEARS_AHEAD = 20
_ASCII_DIGITS = re.compile(r"[0-9]+")
_SEPARATORS = str.maketrans("", "", " -")


def normalize_pan(pan: str) -> str:
    """Drop the spaces and hyphens people type between digit groups; nothing else is changed."""
    return pan.translate(_SEPARATORS)


def _is_ascii_digits(value: str) -> bool:
    return _ASCII_DIGITS.fullmatch(value) is not None


def luhn_valid(pan: str) -> bool:
    """True when ``pan`` (digits, optionally grouped by spaces/hyphens) passes the Luhn mod-10 check."""
    digits = normalize_pan(pan)
    if not _is_ascii_digits(digits):
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def card_brand(pan: str) -> Brand:
    """The card scheme from the IIN (leading digits); ``"unknown"`` when no known range matches."""
    digits = normalize_pan(pan)
    if not _is_ascii_digits(digits):
        return "unknown"
    two, three, four = int(digits[:2]), int(digits[:3]), int(digits[:4])
    if digits[0] == "4":
        return "visa"
    if 51 <= two <= 55 or (len(digits) >= 4 and 2221 <= four <= 2720):
        return "mastercard"
    if two in (34, 37):
        return "amex"
    # Discover before UnionPay: 6011/644-649/65 are Discover, the rest of 62 is UnionPay.
    if (len(digits) >= 4 and four == 6011) or 644 <= three <= 649 or two == 65:
        return "discover"
    if two == 62:
        return "unionpay"
    if len(digits) >= 4 and 3528 <= four <= 3589:
        return "jcb"
    return "unknown"


def validate_pan(pan: str) -> str:
    """Return the PAN as bare digits, or raise ValueError (the message never contains the PAN)."""
    if not isinstance(pan, str):
        raise TypeError("card number must be a string")
    digits = normalize_pan(pan)
    if not _is_ascii_digits(digits):
        raise ValueError("card number may contain only digits, spaces and hyphens")
    if not PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS:
        raise ValueError(f"card number must have {PAN_MIN_DIGITS} to {PAN_MAX_DIGITS} digits")
    if not luhn_valid(digits):
        raise ValueError("card number fails the Luhn check")
    return digits


def validate_expiry(month: int, year: int, today: dt.date) -> tuple[int, int]:
    """Return ``(month, four_digit_year)``; raise ValueError if out of range, expired or implausibly far out.

    A card is valid through the last day of its expiry month. Two-digit years mean 20YY.
    """
    if isinstance(month, bool) or not isinstance(month, int):
        raise TypeError("expiry month must be an integer")
    if isinstance(year, bool) or not isinstance(year, int):
        raise TypeError("expiry year must be an integer")
    if not 1 <= month <= 12:
        raise ValueError("expiry month must be between 1 and 12")
    if 0 <= year < 100:
        year += 2000
    if (year, month) < (today.year, today.month):
        raise ValueError("card has expired")
    if year > today.year + _MAX_YEARS_AHEAD:
        raise ValueError(f"expiry year is more than {_MAX_YEARS_AHEAD} years ahead")
    return month, year


@dataclass(frozen=True, slots=True)
class CardDisplay:
    """What may be shown, logged and stored in clear: brand, BIN (first 6), last four and expiry."""

    brand: Brand
    bin: str
    last4: str
    exp_month: int
    exp_year: int

    @classmethod
    def from_pan(cls, pan: str, exp_month: int, exp_year: int) -> CardDisplay:
        """Display data of a PAN already checked by :func:`validate_pan`."""
        digits = normalize_pan(pan)
        return cls(card_brand(digits), digits[:6], digits[-4:], exp_month, exp_year)

    @property
    def masked(self) -> str:
        """``"411111******1111"``-style label (length unknown once stored, so a fixed 6 stars)."""
        return f"{self.bin}******{self.last4}"
