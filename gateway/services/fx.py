"""Rates and quotes (DESIGN §6 /v1/fx): the rates the FX feed publishes, quotes that lock them.

:class:`FxRates` holds the feed's latest units-per-USD rates (refreshed by gateway/workers/fx.py);
risk screening reads ``amount_usd`` from it without I/O, quotes read cross rates from it. A quote
is refused (503 ``rates_stale``) when the rates are older than ``[fx] max_rate_age``: a stale rate
is a mispriced payment. :class:`FxService` prices, stores and hands out quotes; a payment claims
its quote with :meth:`FxService.claim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import asyncpg

from config.settings import FxSettings
from gateway import errors
from gateway.domain.fx import FxError, FxLeg, Priced, cross_rate, price
from gateway.domain.money import MoneyError, exponent, normalize_currency
from gateway.ids import new_id
from gateway.store import fx as store


class FxRates:
    """Units of each currency per USD and when the feed published them; ``None`` before the first read."""

    def __init__(self, risk_max_age: float = 600.0) -> None:
        self._per_usd: dict[str, Decimal] = {}
        self._as_of: datetime | None = None
        self._risk_max_age = risk_max_age

    def update(self, per_usd: dict[str, Decimal], as_of: datetime) -> None:
        self._per_usd, self._as_of = dict(per_usd), as_of

    @property
    def as_of(self) -> datetime | None:
        return self._as_of

    def age(self) -> float | None:
        return None if self._as_of is None else (datetime.now(UTC) - self._as_of).total_seconds()

    def amount_usd(self, amount: int, currency: str) -> float | None:
        """For risk features: ``None`` without a rate or when the rates are older than ten minutes
        (a rule on amount_usd then sees no value rather than a wrong one)."""
        units = Decimal(amount).scaleb(-exponent(currency))
        if currency == "USD":
            return float(units)
        rate = self._per_usd.get(currency)
        age = self.age()
        if rate is None or age is None or rate <= 0 or age > self._risk_max_age:
            return None
        return float(units / rate)

    def fresh(self, max_age: float) -> tuple[dict[str, Decimal], datetime]:
        """The rates if no older than ``max_age`` seconds; else Unavailable ``rates_stale``."""
        age = self.age()
        if self._as_of is None or age is None or age > max_age:
            raise errors.Unavailable(
                "Exchange rates are stale; no quote can be given now. Retry shortly.",
                code="rates_stale",
                headers={"Retry-After": "5"},
            )
        return self._per_usd, self._as_of


@dataclass(frozen=True, slots=True)
class RatesView:
    base: str
    rates: dict[str, Decimal]
    as_of: datetime


def _currency(code: str, param: str) -> str:
    try:
        return normalize_currency(code, param=param)
    except MoneyError as exc:
        raise errors.InvalidRequest(str(exc), param=exc.param) from exc


class FxService:
    def __init__(self, pool: asyncpg.Pool, rates: FxRates, settings: FxSettings) -> None:
        self._pool = pool
        self._rates = rates
        self._settings = settings

    def rates(self, base: str) -> RatesView:
        """Mid-market units of every known currency per unit of ``base``."""
        base = _currency(base, "base")
        per_usd, as_of = self._rates.fresh(self._settings.max_rate_age)
        known = sorted({"USD", *per_usd} - {base})
        try:
            return RatesView(base, {c: cross_rate(per_usd, base, c) for c in known}, as_of)
        except FxError as exc:
            raise errors.InvalidRequest(str(exc), param="base") from exc

    async def quote(
        self,
        tenant: str,
        *,
        from_currency: str,
        to_currency: str,
        to_amount: int | None,
        from_amount: int | None,
    ) -> store.Quote:
        source = _currency(from_currency, "from_currency")
        target = _currency(to_currency, "to_currency")
        if source == target:
            raise errors.InvalidRequest("from_currency and to_currency must differ.", param="to_currency")
        per_usd, as_of = self._rates.fresh(self._settings.max_rate_age)
        try:
            priced: Priced = price(
                from_currency=source,
                to_currency=target,
                mid_rate=cross_rate(per_usd, source, target),
                spread=Decimal(self._settings.spread),
                to_amount=to_amount,
                from_amount=from_amount,
            )
        except FxError as exc:
            raise errors.InvalidRequest(str(exc), param=exc.param) from exc
        async with self._pool.acquire() as conn:
            return await store.insert_quote(
                conn,
                quote_id=new_id("fxq"),
                tenant=tenant,
                from_currency=source,
                to_currency=target,
                from_amount=priced.from_amount,
                to_amount=priced.to_amount,
                fee=priced.fee,
                mid_rate=priced.mid_rate,
                rate=priced.rate,
                spread=Decimal(self._settings.spread),
                rates_as_of=as_of,
                ttl_seconds=self._settings.quote_ttl,
            )

    async def get(self, tenant: str, quote_id: str) -> store.Quote:
        async with self._pool.acquire() as conn:
            quote = await store.get_quote(conn, tenant=tenant, quote_id=quote_id)
        if quote is None:
            raise errors.NotFound(f"No such FX quote: '{quote_id}'.", param="id")
        return quote

    async def check(self, tenant: str, quote_id: str, *, amount: int, currency: str) -> store.Quote:
        """The quote a payment names, if it can pay with it: the tenant's, unexpired, unused, and
        for this amount and currency (400 naming ``fx_quote``, ``amount`` or ``currency``)."""
        async with self._pool.acquire() as conn:
            quote = await store.get_quote(conn, tenant=tenant, quote_id=quote_id)
        if quote is None:
            raise errors.InvalidRequest(f"No such FX quote: '{quote_id}'.", param="fx_quote")
        if quote.from_currency != currency:
            raise errors.InvalidRequest(
                f"The quote is paid in {quote.from_currency}, not {currency}.", param="currency"
            )
        if quote.from_amount != amount:
            raise errors.InvalidRequest(
                f"The quote is for an amount of {quote.from_amount} {quote.from_currency}.", param="amount"
            )
        return quote

    async def claim(self, quote: store.Quote, *, key: str) -> FxLeg:
        """Mark the quote used by the request under ``key`` (400 when expired or used by another)."""
        async with self._pool.acquire() as conn:
            claimed = await store.claim_quote(conn, tenant=quote.tenant, quote_id=quote.id, key=key)
            if claimed is None:
                current = await store.get_quote(conn, tenant=quote.tenant, quote_id=quote.id)
        if claimed is None:
            if current is not None and current.used_key not in (None, key):
                raise errors.InvalidRequest(
                    "This FX quote was already used by another payment.", code="quote_used", param="fx_quote"
                )
            raise errors.InvalidRequest(
                "This FX quote has expired: ask for a new one.", code="quote_expired", param="fx_quote"
            )
        return FxLeg(
            claimed.id,
            claimed.from_amount,
            claimed.from_currency,
            claimed.to_amount,
            claimed.to_currency,
            claimed.fee,
            str(claimed.rate),
        )
