"""Minor units ↔ what people read and type, per ISO 4217 exponent."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

EXPONENTS = {"JPY": 0, "KRW": 0, "KWD": 3, "BHD": 3, "JOD": 3}
SYMBOLS = {"CNY": "¥", "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "HKD": "HK$"}


def exponent(currency: str) -> int:
    return EXPONENTS.get(currency.upper(), 2)


def format_money(amount: int | None, currency: str | None) -> str:
    if amount is None or not currency:
        return "—"
    exp = exponent(currency)
    value = Decimal(amount).scaleb(-exp)
    return f"{SYMBOLS.get(currency.upper(), '')}{value:,.{exp}f} {currency.upper()}"


def parse_amount(text: str, currency: str) -> int | None:
    """'128.50' in CNY → 12850; None when it is not a positive amount with at most the currency's decimals."""
    try:
        value = Decimal(text.strip().replace(",", ""))
    except InvalidOperation:
        return None
    if not value.is_finite() or value <= 0:
        return None
    minor = value.scaleb(exponent(currency))
    if minor != minor.to_integral_value() or minor > 99_999_999_999:
        return None
    return int(minor)
