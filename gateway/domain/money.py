"""Money: integer minor units and ISO 4217 currencies with their exponents.

Amounts never pass through floats. ``currency`` is a lower- or upper-case ISO 4217 code that is
in circulation (funds codes and precious metals are refused); the exponent says how many minor
units a major unit has (JPY 0, USD 2, KWD 3), which matters when a payer types a major amount
or when amounts are compared across currencies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

_EXPONENT_0: Final = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_EXPONENT_3: Final = "BHD IQD JOD KWD LYD OMR TND"
_EXPONENT_4: Final = "CLF UYW"
_EXPONENT_2: Final = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
    "GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD "
    "MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP "
    "PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWG"
)

EXPONENTS: Final[dict[str, int]] = {
    **{code: 0 for code in _EXPONENT_0.split()},
    **{code: 2 for code in _EXPONENT_2.split()},
    **{code: 3 for code in _EXPONENT_3.split()},
    **{code: 4 for code in _EXPONENT_4.split()},
}

# 11 digits of minor units: far above any single retail or bill payment, far below int64 limits
# even after summing many of them.
MAX_AMOUNT: Final = 99_999_999_999


class MoneyError(ValueError):
    """An amount or currency that payhub refuses; ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def normalize_currency(code: str, *, param: str = "currency") -> str:
    """Upper-case ISO 4217 code in circulation, or MoneyError."""
    upper = code.upper()
    if upper not in EXPONENTS:
        raise MoneyError(f"Unsupported currency '{code[:8]}': use an ISO 4217 code such as USD.", param=param)
    return upper


def exponent(currency: str) -> int:
    return EXPONENTS[currency.upper()]


def check_amount(amount: int, *, param: str = "amount", allow_zero: bool = False) -> int:
    # bool is an int subclass in Python; true/false is never an amount.
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise MoneyError("Amount must be an integer in minor units.", param=param)
    low = 0 if allow_zero else 1
    if not low <= amount <= MAX_AMOUNT:
        raise MoneyError(f"Amount must be between {low} and {MAX_AMOUNT} minor units.", param=param)
    return amount


@dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str

    @classmethod
    def of(
        cls, amount: int, currency: str, *, amount_param: str = "amount", currency_param: str = "currency"
    ) -> Money:
        return cls(
            check_amount(amount, param=amount_param), normalize_currency(currency, param=currency_param)
        )

    def format(self) -> str:
        """Human form for messages and receipts: ``12850 CNY`` → ``128.50 CNY``."""
        exp = exponent(self.currency)
        if exp == 0:
            return f"{self.amount} {self.currency}"
        major, minor = divmod(self.amount, 10**exp)
        return f"{major}.{minor:0{exp}d} {self.currency}"
