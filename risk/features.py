"""The CEL activation a rule sees: one payment's facts, its velocity and its history.

This is the public contract for rule authors. Every name below is always present with a
typed value, never null: CEL has no null-safe navigation, so a missing key would make the
rule error (and not match) instead of simply being false. "Absent" is spelled as the zero of
the type: ``""``, ``0``, ``0.0``, ``false``, ``[]`` (``-1`` for ``customer.age_days``).

    tenant              string
    amount              int     minor units, as in the API
    currency            string  ISO 4217
    amount_usd          double  amount converted to USD; 0.0 when no rate is known
    has_usd_rate        bool    false when amount_usd is a placeholder 0.0
    method              string  card, bank_transfer, wallet, balance, prepaid
    biller              string  biller id, "" when not a bill payment
    msisdn              string  top-up target, "" when none
    card                {bin string, brand string, country string}
    ip                  {address string, country string}
    phone               {country string}
    customer            {id string, email string, age_days int (-1 = first payment), new bool}
    device              {id string, new bool (an id given and not seen for this customer)}
    countries_mismatch  bool    at least two of card/ip/phone countries known, and not all equal
    velocity            {card|customer|ip|device|msisdn: {m1|h1|d1:
                            {count int, amount_usd double, declines int, distinct_msisdn int}}}
    otp_failures_24h    int
    lists               {deny bool, allow bool, deny_hits list<string>, allow_hits list<string>}
                        hits read "kind:value", e.g. "ip:198.51.100.66", "email:fraud@example.com"

Numbers: ``amount_usd`` and ``velocity.*.*.amount_usd`` are always doubles and every count is
an int. Compare doubles with double literals (``amount_usd >= 2000.0``) and ints with int
literals: standard CEL has no implicit int/double conversion, and a rule that relies on one
may stop matching on another CEL implementation.

Countries are ISO 3166 alpha-2 codes from ``risk.geo`` ("" when unknown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from risk.geo import IpCountryLookup, bin_country, phone_country

KeyKind = Literal["card", "customer", "ip", "device", "msisdn"]
Window = Literal["m1", "h1", "d1"]
KEY_KINDS: tuple[KeyKind, ...] = ("card", "customer", "ip", "device", "msisdn")
WINDOWS: tuple[Window, ...] = ("m1", "h1", "d1")


@dataclass(frozen=True, slots=True)
class PaymentFacts:
    """What the payment request itself says (amounts in minor units, as in the API)."""

    tenant: str
    amount: int
    currency: str
    amount_usd: float | None  # None: no USD rate for this currency right now
    method: str
    card_bin: str | None = None
    card_brand: str | None = None
    customer_id: str | None = None
    email: str | None = None
    phone: str | None = None
    ip: str | None = None
    device_id: str | None = None
    msisdn: str | None = None
    biller: str | None = None


@dataclass(frozen=True, slots=True)
class VelocityCell:
    """What one key (a card, an IP, …) did in one window, this payment excluded."""

    count: int = 0
    amount_usd: float = 0.0
    declines: int = 0
    distinct_msisdn: int = 0


_EMPTY_CELL = VelocityCell()


@dataclass(frozen=True)
class Velocity:
    """Counts per (key kind, window); a cell not given is all zeros (a key never seen)."""

    cells: Mapping[tuple[KeyKind, Window], VelocityCell] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> Velocity:
        return cls()

    def get(self, kind: KeyKind, window: Window) -> VelocityCell:
        return self.cells.get((kind, window), _EMPTY_CELL)

    def as_activation(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            kind: {window: _cell_activation(self.get(kind, window)) for window in WINDOWS}
            for kind in KEY_KINDS
        }


def _cell_activation(cell: VelocityCell) -> dict[str, Any]:
    # int()/float() because the store may hand back Decimal or bool, which CEL types differently.
    return {
        "count": int(cell.count),
        "amount_usd": float(cell.amount_usd),
        "declines": int(cell.declines),
        "distinct_msisdn": int(cell.distinct_msisdn),
    }


@dataclass(frozen=True, slots=True)
class History:
    """What the hub already knows about this customer, device and the tenant's lists."""

    customer_age_days: int | None = None  # None: first payment of this customer
    device_known: bool = False
    otp_failures_24h: int = 0
    deny_hits: tuple[str, ...] = ()
    allow_hits: tuple[str, ...] = ()


def _countries_mismatch(*countries: str) -> bool:
    known = {c for c in countries if c}
    return len(known) > 1


def build_features(
    facts: PaymentFacts, velocity: Velocity, history: History, ip_countries: IpCountryLookup
) -> dict[str, Any]:
    """The CEL activation for one payment (names and types in the module docstring)."""
    card_country = bin_country(facts.card_bin) if facts.card_bin else None
    ip_country = ip_countries.country(facts.ip) if facts.ip else None
    phone_ctry = phone_country(facts.phone) if facts.phone else None
    age = history.customer_age_days
    # A rate that is not a finite number is no rate: CEL compares no NaN.
    usd = facts.amount_usd if facts.amount_usd is not None and math.isfinite(facts.amount_usd) else None
    return {
        "tenant": facts.tenant,
        "amount": int(facts.amount),
        "currency": facts.currency,
        "amount_usd": float(usd) if usd is not None else 0.0,
        "has_usd_rate": usd is not None,
        "method": facts.method,
        "biller": facts.biller or "",
        "msisdn": facts.msisdn or "",
        "card": {
            "bin": facts.card_bin or "",
            "brand": facts.card_brand or "",
            "country": card_country or "",
        },
        "ip": {"address": facts.ip or "", "country": ip_country or ""},
        "phone": {"country": phone_ctry or ""},
        "customer": {
            "id": facts.customer_id or "",
            "email": facts.email or "",
            "age_days": int(age) if age is not None else -1,
            "new": age is None,
        },
        "device": {
            "id": facts.device_id or "",
            "new": bool(facts.device_id) and not history.device_known,
        },
        "countries_mismatch": _countries_mismatch(card_country or "", ip_country or "", phone_ctry or ""),
        "velocity": velocity.as_activation(),
        "otp_failures_24h": int(history.otp_failures_24h),
        "lists": {
            "deny": bool(history.deny_hits),
            "allow": bool(history.allow_hits),
            "deny_hits": list(history.deny_hits),
            "allow_hits": list(history.allow_hits),
        },
    }
