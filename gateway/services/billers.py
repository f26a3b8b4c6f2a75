"""The biller catalog: which billers exist, what they need from the customer, their bills, and the
checks a bill payment must pass *before* any money is collected.

Built once at start-up (``gateway.app``) from ``describe()`` of every biller connector; stored
under ``gateway.keys.BILLERS``. Connector errors are mapped to API errors
here, once (DESIGN §11)::

    NoDues                                → 404 invalid_request_error / bill_not_found
    AmountNotAllowed                      → 400 invalid_request_error / amount_not_allowed (param amount)
    InvalidParams                         → 400 invalid_request_error / parameter_invalid (customer param)
    ServiceWindowClosed                   → 503 api_error / service_window_closed (+ Retry-After)
    ConnectorUnavailable, OutcomeUnknown,
    SignatureError, anything else         → 503 api_error / biller_unavailable (+ Retry-After)

Fetched bills are cached for ``cache_ttl`` seconds (30), keyed by tenant, biller and customer params,
at most ``cache_size`` entries (LRU), so a customer who fetches, reviews and pays does not cost the
biller three queries. "No dues" is cached too; failures are not.
"""

from __future__ import annotations

import builtins
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from config.settings import ConfigError
from connectors.base import (
    AmountNotAllowed,
    Bill,
    BillerConnector,
    BillerInfo,
    BillPayment,
    ConnectorError,
    InvalidParams,
    NoDues,
    ServiceWindowClosed,
)
from gateway import errors
from gateway.logs import get_logger

log = get_logger("gateway.billers")

CACHE_TTL = 30.0
CACHE_SIZE = 4096
RETRY_AFTER_UNAVAILABLE = "5"
RETRY_AFTER_WINDOW = "60"
CATEGORIES = (
    "water",
    "electricity",
    "gas",
    "telecom_prepaid",
    "telecom_postpaid",
    "broadband",
    "credit_card",
)


@runtime_checkable
class ValidatingBiller(Protocol):
    """Optional: a connector that can check a payment with the biller before money is collected
    (validate → pay, e.g. a top-up's operator lookup). Returns the normalised customer params."""

    async def validate(
        self, biller: str, customer_params: Mapping[str, str], amount: int
    ) -> Mapping[str, str]: ...


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    info: BillerInfo
    connector_name: str
    connector: BillerConnector
    patterns: tuple[tuple[str, re.Pattern[str]], ...]


@dataclass(frozen=True, slots=True)
class ValidatedBill:
    """A bill payment that passed every check; what the posting needs after the money is collected."""

    biller: BillerInfo
    connector_name: str
    connector: BillerConnector
    customer_params: Mapping[str, str]  # normalised (E.164 MSISDN …): store and post these
    amount: int
    currency: str
    bill: Bill | None  # the fetched bill that ``bill_ref`` named (None when the biller has no fetch)

    def payment(self, *, attempt_id: str, payment_id: str) -> BillPayment:
        """The posting request; ``attempt_id`` is the reference the biller deduplicates on."""
        return BillPayment(
            attempt_id=attempt_id,
            payment_id=payment_id,
            biller=self.biller.id,
            customer_params=dict(self.customer_params),
            amount=self.amount,
            currency=self.currency,
            bill_ref=self.bill.bill_ref if self.bill is not None else None,
        )


CacheKey = tuple[str, str, tuple[tuple[str, str], ...]]


class BillCache:
    """Bounded TTL cache of fetch results; an empty tuple records "no dues"."""

    def __init__(self, ttl: float, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._items: OrderedDict[CacheKey, tuple[float, tuple[Bill, ...]]] = OrderedDict()

    def get(self, key: CacheKey) -> tuple[Bill, ...] | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, bills = item
        if self._clock() >= expires:
            del self._items[key]
            return None
        self._items.move_to_end(key)
        return bills

    def put(self, key: CacheKey, bills: tuple[Bill, ...]) -> None:
        if self._ttl <= 0 or self._size <= 0:
            return
        self._items[key] = (self._clock() + self._ttl, bills)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def _entry_for(info: BillerInfo, name: str, connector: BillerConnector) -> CatalogEntry:
    where = f"connector '{name}', biller '{info.id}'"
    if not re.fullmatch(r"bil_[a-z0-9_]{1,60}", info.id) or info.category not in CATEGORIES:
        raise ConfigError(f"{where}: bad id or category '{info.category}'")
    if not info.customer_params or any(d <= 0 for d in info.denominations):
        raise ConfigError(f"{where}: needs customer params, and positive denominations")
    try:
        patterns = tuple((p.name, re.compile(p.regex)) for p in info.customer_params)
    except re.error as exc:
        raise ConfigError(f"{where}: customer param regex does not compile: {exc}") from exc
    return CatalogEntry(info, name, connector, patterns)


class BillerCatalog:
    def __init__(
        self,
        entries: Mapping[str, CatalogEntry],
        *,
        cache_ttl: float = CACHE_TTL,
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries = dict(sorted(entries.items()))
        self._cache = BillCache(cache_ttl, cache_size, clock)

    @classmethod
    async def build(
        cls,
        connectors: Mapping[str, BillerConnector],
        *,
        cache_ttl: float = CACHE_TTL,
        cache_size: int = CACHE_SIZE,
    ) -> BillerCatalog:
        """Ask every biller connector what it serves; a biller served twice stops start-up."""
        entries: dict[str, CatalogEntry] = {}
        for name, connector in sorted(connectors.items()):
            try:
                described = await connector.describe()
            except ConnectorError as exc:
                raise ConfigError(f"connector '{name}': describe() failed: {exc}") from exc
            for info in described:
                if info.id in entries:
                    other = entries[info.id].connector_name
                    raise ConfigError(f"biller '{info.id}' is served by both '{other}' and '{name}'")
                entries[info.id] = _entry_for(info, name, connector)
        return cls(entries, cache_ttl=cache_ttl, cache_size=cache_size)

    # ---- catalog reads

    def _entry(self, biller_id: str, *, param: str) -> CatalogEntry:
        entry = self._entries.get(biller_id)
        if entry is None:
            raise errors.NotFound(f"No such biller: '{biller_id}'.", param=param)
        return entry

    def get(self, biller_id: str, *, param: str = "id") -> BillerInfo:
        return self._entry(biller_id, param=param).info

    def connector(self, biller_id: str) -> tuple[str, BillerConnector]:
        """(connector name, connector) serving ``biller_id``: for status inquiries and reversals."""
        entry = self._entry(biller_id, param="biller")
        return entry.connector_name, entry.connector

    def list(self, *, category: str | None = None, country: str | None = None) -> list[BillerInfo]:
        """Billers by id, optionally only one category and/or country."""
        return [
            entry.info
            for entry in self._entries.values()
            if (category is None or entry.info.category == category)
            and (country is None or entry.info.country == country)
        ]

    # ---- customer params

    @staticmethod
    def _check_params(entry: CatalogEntry, given: Mapping[str, object], prefix: str) -> dict[str, str]:
        """Exactly the biller's params, each matching its regex.

        Errors name ``<prefix>customer_params.<name>``."""
        where = f"{prefix}customer_params"
        expected = [name for name, _ in entry.patterns]
        for name in given:
            if name not in expected:
                raise errors.InvalidRequest(
                    f"Received unknown parameter: {where}.{name}. "
                    f"{entry.info.id} takes: {', '.join(expected)}.",
                    code="parameter_unknown",
                    param=f"{where}.{name}",
                )
        checked: dict[str, str] = {}
        for (name, pattern), spec in zip(entry.patterns, entry.info.customer_params, strict=True):
            value = given.get(name)
            if value is None:
                raise errors.InvalidRequest(
                    f"Missing required parameter: {where}.{name} ({spec.description or spec.regex}).",
                    code="parameter_missing",
                    param=f"{where}.{name}",
                )
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise errors.InvalidRequest(
                    f"Invalid {where}.{name}: it must be a string matching {spec.regex}"
                    + (f" ({spec.description})." if spec.description else "."),
                    param=f"{where}.{name}",
                )
            checked[name] = value
        return checked

    def check_customer_params(
        self, biller_id: str, customer_params: Mapping[str, object]
    ) -> tuple[BillerInfo, dict[str, str]]:
        """The biller (404 ``biller``) and its exactly-matching customer params (400
        ``customer_params.<name>``), for a biller with bills to fetch; checks only, no call."""
        entry = self._entry(biller_id, param="biller")
        params = self._check_params(entry, customer_params, "")
        if entry.info.fetch == "none":
            raise errors.InvalidRequest(
                f"{biller_id} has no bills to fetch ({entry.info.category}).",
                code="fetch_not_supported",
                param="biller",
            )
        return entry.info, params

    # ---- errors

    @staticmethod
    def _api_error(exc: ConnectorError, entry: CatalogEntry, prefix: str) -> errors.ApiError:
        biller = entry.info.id
        first_param = f"{prefix}customer_params.{entry.info.customer_params[0].name}"
        if isinstance(exc, NoDues):
            return errors.NotFound(
                f"No bill is due on this account at {biller}.", code="bill_not_found", param=first_param
            )
        if isinstance(exc, AmountNotAllowed):
            return errors.InvalidRequest(f"{biller}: {exc}", code="amount_not_allowed", param="amount")
        if isinstance(exc, InvalidParams):
            return errors.InvalidRequest(
                f"{biller} refused the customer parameters: {exc}", param=first_param
            )
        log.warning(
            "billers.connector_error",
            biller=biller,
            connector=entry.connector_name,
            error=type(exc).__name__,
            detail=str(exc),
        )
        if isinstance(exc, ServiceWindowClosed):
            return errors.Unavailable(
                f"{biller} is in its daily batch window; try again later.",
                code="service_window_closed",
                headers={"Retry-After": RETRY_AFTER_WINDOW},
            )
        return errors.Unavailable(
            f"{biller} is not answering; try again shortly.",
            code="biller_unavailable",
            headers={"Retry-After": RETRY_AFTER_UNAVAILABLE},
        )

    # ---- bills

    async def _fetch(
        self, tenant: str, entry: CatalogEntry, params: Mapping[str, str], prefix: str, *, fresh: bool = False
    ) -> tuple[Bill, ...]:
        key: CacheKey = (tenant, entry.info.id, tuple(sorted(params.items())))
        cached = None if fresh else self._cache.get(key)
        if cached is None:
            try:
                cached = tuple(await entry.connector.fetch_bills(entry.info.id, params))
            except NoDues:
                cached = ()
            except ConnectorError as exc:
                raise self._api_error(exc, entry, prefix) from exc
            self._cache.put(key, cached)
        if not cached:
            raise self._api_error(NoDues(), entry, prefix)
        return cached

    async def fetch(
        self, tenant: str, biller_id: str, customer_params: Mapping[str, object]
    ) -> builtins.list[Bill]:
        """The customer's open bills (``POST /v1/bills/fetch``); never an empty list: 404 instead."""
        entry = self._entry(biller_id, param="biller")
        params = self._check_params(entry, customer_params, "")
        if entry.info.fetch == "none":
            raise errors.InvalidRequest(
                f"{biller_id} has no bills to fetch ({entry.info.category}): pay one of its "
                "denominations directly.",
                code="fetch_not_supported",
                param="biller",
            )
        return list(await self._fetch(tenant, entry, params, ""))

    async def validate_payment(
        self,
        biller_id: str,
        customer_params: Mapping[str, object],
        amount: int,
        currency: str,
        bill_ref: str | None,
        *,
        tenant: str,
    ) -> ValidatedBill:
        """Every check a bill payment must pass before the money is collected (DESIGN §6 ``bill``).

        Errors name the request's fields: ``bill.biller`` (404), ``bill.customer_params.<name>``,
        ``bill.bill_ref`` (missing: 400; not an open bill: 404 ``bill_not_found``), ``currency``,
        ``amount`` (400 ``amount_not_allowed``). A biller that cannot be reached answers 503: nothing
        was collected, the client may retry with the same Idempotency-Key.
        """
        entry = self._entry(biller_id, param="bill.biller")
        info = entry.info
        params = self._check_params(entry, customer_params, "bill.")
        if currency.upper() != info.currency:
            raise errors.InvalidRequest(f"{info.id} is paid in {info.currency}.", param="currency")
        if amount <= 0:
            raise errors.InvalidRequest("amount must be a positive integer.", param="amount")
        if info.denominations and amount not in info.denominations:
            offered = ", ".join(str(d) for d in info.denominations)
            raise errors.InvalidRequest(
                f"{info.id} sells these amounts only: {offered}.", code="amount_not_allowed", param="amount"
            )
        bill: Bill | None = None
        if info.fetch == "none":
            if bill_ref is not None:
                raise errors.InvalidRequest(
                    f"{info.id} has no bills: leave out bill_ref.", param="bill.bill_ref"
                )
        elif bill_ref is None:
            if info.fetch == "required":
                raise errors.InvalidRequest(
                    "Missing required parameter: bill.bill_ref (fetch the bill with POST /v1/bills/fetch).",
                    code="parameter_missing",
                    param="bill.bill_ref",
                )
        else:
            bill = await self._find_bill(tenant, entry, params, bill_ref)
            _check_exactness(info, bill, amount)
        if isinstance(entry.connector, ValidatingBiller):
            try:
                params = dict(await entry.connector.validate(info.id, params, amount))
            except ConnectorError as exc:
                raise self._api_error(exc, entry, "bill.") from exc
        return ValidatedBill(info, entry.connector_name, entry.connector, params, amount, info.currency, bill)

    async def _find_bill(
        self, tenant: str, entry: CatalogEntry, params: Mapping[str, str], bill_ref: str
    ) -> Bill:
        for fresh in (False, True):  # a cached list may predate the bill: ask the biller once more
            bills = await self._fetch(tenant, entry, params, "bill.", fresh=fresh)
            for bill in bills:
                if bill.bill_ref == bill_ref:
                    return bill
        raise errors.NotFound(
            f"No open bill '{bill_ref}' on this account at {entry.info.id}.",
            code="bill_not_found",
            param="bill.bill_ref",
        )


def _check_exactness(info: BillerInfo, bill: Bill, amount: int) -> None:
    rule, due = info.amount_exactness, bill.amount_due
    allowed = {
        "exact": amount == due,
        "exact_or_above": amount >= due,
        "exact_or_below": amount <= due,
        "any": True,
    }[rule]
    if not allowed:
        wording = {
            "exact": "exactly",
            "exact_or_above": "at least",
            "exact_or_below": "at most",
            "any": "any amount",
        }[rule]
        raise errors.InvalidRequest(
            f"{info.id} takes {wording} the amount due on bill {bill.bill_ref}: {due} {bill.currency}.",
            code="amount_not_allowed",
            param="amount",
        )
