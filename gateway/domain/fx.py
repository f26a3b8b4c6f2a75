"""Money across currencies: cross rates, quote pricing and the split of an FX payment (pure).

A quote converts what the payer pays (``from``) into what the payee gets (``to``, e.g. a USD
bill). Rates are mid-market units of a currency per USD (the FX feed's USD rates); a quote's
customer ``rate`` is the mid rate less the spread::

    mid   = to per from, at mid-market
    rate  = mid * (1 - spread)                 (what the payer gets per unit paid)
    from  = ceil(to / rate)                    (the payer never pays short of the amount due)
    fee   = from - round_half_even(to / mid)   (the spread, booked as revenue in ``from``)

Amounts are integer minor units with each currency's own exponent (JPY 0, KWD 3), converted
through ``Decimal`` only, never ``float``. In the ledger an FX payment stays balanced per
currency: the payer's side moves ``from`` in its currency (``from - fee`` to the FX account,
``fee`` to the fees account), the payee's side moves ``to`` out of the FX account in its currency.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from gateway.domain.money import MAX_AMOUNT, exponent

RATE_PLACES = Decimal("0.0000000001")  # rates shown and stored with 10 decimal places


class FxError(ValueError):
    """A conversion payhub refuses (no rate, an amount out of range); ``param`` names the field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def cross_rate(per_usd: dict[str, Decimal], base: str, quote: str) -> Decimal:
    """Units of ``quote`` per unit of ``base``, from units-per-USD rates; FxError without a rate."""
    for currency, param in ((base, "from_currency"), (quote, "to_currency")):
        if currency != "USD" and currency not in per_usd:
            raise FxError(f"No exchange rate for {currency}.", param=param)
    usd_base = Decimal(1) if base == "USD" else per_usd[base]
    usd_quote = Decimal(1) if quote == "USD" else per_usd[quote]
    with localcontext() as ctx:
        ctx.prec = 28
        return (usd_quote / usd_base).quantize(RATE_PLACES, rounding=ROUND_HALF_EVEN)


def _major(amount: int, currency: str) -> Decimal:
    return Decimal(amount).scaleb(-exponent(currency))


def _minor(value: Decimal, currency: str, rounding: str) -> int:
    return int(value.scaleb(exponent(currency)).to_integral_value(rounding=rounding))


@dataclass(frozen=True, slots=True)
class Priced:
    """A quote's amounts: ``from_amount`` is charged, ``to_amount`` delivered, ``fee`` of it kept."""

    from_amount: int
    to_amount: int
    fee: int
    mid_rate: Decimal
    rate: Decimal


def price(
    *,
    from_currency: str,
    to_currency: str,
    mid_rate: Decimal,
    spread: Decimal,
    to_amount: int | None = None,
    from_amount: int | None = None,
) -> Priced:
    """Price a quote for exactly one of ``to_amount`` (what must arrive) or ``from_amount`` (what is paid)."""
    if (to_amount is None) == (from_amount is None):
        raise FxError("Give exactly one of to_amount and from_amount.", param="to_amount")
    if not 0 <= spread < 1:
        raise FxError("The spread must be at least 0 and below 1.", param="spread")
    with localcontext() as ctx:
        ctx.prec = 34
        rate = (mid_rate * (1 - spread)).quantize(RATE_PLACES, rounding=ROUND_FLOOR)
        if rate <= 0:
            raise FxError(f"No usable rate from {from_currency} to {to_currency}.", param="to_currency")
        if to_amount is not None:
            paid = _minor(_major(to_amount, to_currency) / rate, from_currency, ROUND_CEILING)
            delivered = to_amount
        else:
            assert from_amount is not None
            paid = from_amount
            delivered = _minor(_major(from_amount, from_currency) * rate, to_currency, ROUND_FLOOR)
        at_mid = _minor(_major(delivered, to_currency) / mid_rate, from_currency, ROUND_HALF_EVEN)
    param = "to_amount" if to_amount is not None else "from_amount"
    if not 1 <= paid <= MAX_AMOUNT or not 1 <= delivered <= MAX_AMOUNT:
        raise FxError(f"The converted amount is out of range (1 to {MAX_AMOUNT} minor units).", param=param)
    return Priced(paid, delivered, max(paid - at_mid, 0), mid_rate, rate)


@dataclass(frozen=True, slots=True)
class FxLeg:
    """What an FX payment carries into the ledger and the biller: the quote's snapshot."""

    quote: str
    from_amount: int
    from_currency: str
    to_amount: int
    to_currency: str
    fee: int
    rate: str

    def as_json(self) -> dict[str, Any]:
        return {
            "quote": self.quote,
            "from_amount": self.from_amount,
            "from_currency": self.from_currency,
            "to_amount": self.to_amount,
            "to_currency": self.to_currency,
            "fee": self.fee,
            "rate": self.rate,
        }

    @classmethod
    def of(cls, data: dict[str, Any] | None) -> FxLeg | None:
        if not data:
            return None
        return cls(
            data["quote"],
            int(data["from_amount"]),
            data["from_currency"],
            int(data["to_amount"]),
            data["to_currency"],
            int(data["fee"]),
            str(data["rate"]),
        )

    def share(self, amount: int) -> tuple[int, int]:
        """``(to_part, fee_part)`` of ``amount`` (in the from currency): all of both for the whole
        amount, in proportion (rounded down) for a part, so the parts never add up to more."""
        if amount == self.from_amount:
            return self.to_amount, self.fee
        return self.to_amount * amount // self.from_amount, self.fee * amount // self.from_amount
