"""The asynchronous client: one resource object per API area, each method one request."""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import msgspec

from ._transport import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    Response,
    Transport,
    path_id,
    ssl_context,
)
from .errors import APIError
from .models import (
    Account,
    Bill,
    Biller,
    DeletedWebhookEndpoint,
    Device,
    Event,
    FxQuote,
    FxRates,
    LedgerEntry,
    Page,
    Payment,
    Ping,
    Preferences,
    Redelivery,
    Refund,
    Reminder,
    Review,
    Token,
    WebhookEndpoint,
    WebhookEndpointWithSecret,
)

T = TypeVar("T")
StrPath = str | os.PathLike[str]
Timestamp = datetime | int | str


def new_idempotency_key() -> str:
    """A fresh Idempotency-Key (uuid4-based), as generated for every money-moving POST."""
    return f"phc_{uuid.uuid4().hex}"


def _decode(response: Response, model: type[T]) -> T:
    try:
        return msgspec.json.decode(response.body, type=model)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise APIError(
            f"unexpected answer from the hub: {exc}",
            status=response.status,
            request_id=response.request_id,
            body=response.body[:2000],
            headers=response.headers,
        ) from exc


class AsyncPager(Generic[T]):
    """An auto-paging list: ``async for item in pager`` follows ``starting_after`` while ``has_more``.

    ``limit`` is the page size (1-100). ``first_page()`` fetches one page only (keyset pagination
    by hand: pass ``starting_after`` / ``ending_before`` to the list method).
    """

    def __init__(self, client: AsyncPayhub, path: str, params: Mapping[str, Any], item: type[T]) -> None:
        self._client = client
        self._path = path
        self._params = dict(params)
        self._item = item

    async def first_page(self) -> Page[T]:
        return await self._page(self._params)

    async def _page(self, params: Mapping[str, Any]) -> Page[T]:
        response = await self._client._transport.request("GET", self._path, params=params)
        return _decode(response, Page[self._item])  # type: ignore[name-defined]

    async def _iterate(self) -> AsyncIterator[T]:
        params = dict(self._params)
        backwards = params.get("ending_before") is not None
        while True:
            page = await self._page(params)
            for item in page.data:
                yield item
            if not page.has_more or not page.data:
                return
            if backwards:
                params["ending_before"] = getattr(page.data[0], "id")  # noqa: B009
            else:
                params["starting_after"] = getattr(page.data[-1], "id")  # noqa: B009

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def collect(self, max_items: int | None = None) -> list[T]:
        """Every item (or the first ``max_items``) in a list."""
        items: list[T] = []
        async for item in self:
            if max_items is not None and len(items) >= max_items:
                break
            items.append(item)
        return items


class _Resource:
    def __init__(self, client: AsyncPayhub) -> None:
        self._client = client

    async def _call(
        self,
        method: str,
        path: str,
        model: type[T],
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> T:
        response = await self._client._transport.request(
            method, path, params=params, body=body, idempotency_key=idempotency_key
        )
        return _decode(response, model)

    def _list(self, path: str, item: type[T], **params: Any) -> AsyncPager[T]:
        return AsyncPager(self._client, path, params, item)


def _page_params(limit: int | None, starting_after: str | None, ending_before: str | None) -> dict[str, Any]:
    return {"limit": limit, "starting_after": starting_after, "ending_before": ending_before}


class Billers(_Resource):
    def list(
        self,
        category: str | None = None,
        country: str | None = None,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[Biller]:
        return self._list(
            "/v1/billers",
            Biller,
            category=category,
            country=country,
            **_page_params(limit, starting_after, ending_before),
        )

    async def get(self, biller_id: str) -> Biller:
        return await self._call("GET", f"/v1/billers/{path_id(biller_id)}", Biller)


class Bills(_Resource):
    async def fetch(self, biller: str | Biller, customer_params: Mapping[str, str]) -> list[Bill]:
        """Open bills for this biller account (404 ``bill_not_found`` when there are no dues)."""
        biller_id = biller.id if isinstance(biller, Biller) else biller
        body = {"biller": biller_id, "customer_params": dict(customer_params)}
        page = await self._call("POST", "/v1/bills/fetch", Page[Bill], body=body)
        return page.data


class Payments(_Resource):
    async def create(
        self,
        *,
        amount: int,
        currency: str,
        payment_method: Mapping[str, Any],
        customer: Mapping[str, Any] | None = None,
        bill: Mapping[str, Any] | None = None,
        fx_quote: str | None = None,
        capture_method: str | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """Create and confirm a payment. A decline is a Payment with ``status == "failed"``."""
        body = {
            "amount": amount,
            "currency": currency,
            "payment_method": dict(payment_method),
            "customer": dict(customer) if customer is not None else None,
            "bill": dict(bill) if bill is not None else None,
            "fx_quote": fx_quote,
            "capture_method": capture_method,
            "description": description,
            "metadata": dict(metadata) if metadata is not None else None,
        }
        key = idempotency_key or new_idempotency_key()
        return await self._call("POST", "/v1/payments", Payment, body=body, idempotency_key=key)

    async def get(self, payment_id: str) -> Payment:
        return await self._call("GET", f"/v1/payments/{path_id(payment_id)}", Payment)

    def list(
        self,
        *,
        status: str | None = None,
        method: str | None = None,
        customer: str | None = None,
        biller: str | None = None,
        created_gte: Timestamp | None = None,
        created_lte: Timestamp | None = None,
        amount_gte: int | None = None,
        amount_lte: int | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[Payment]:
        return self._list(
            "/v1/payments",
            Payment,
            status=status,
            method=method,
            customer=customer,
            biller=biller,
            created_gte=created_gte,
            created_lte=created_lte,
            amount_gte=amount_gte,
            amount_lte=amount_lte,
            **_page_params(limit, starting_after, ending_before),
        )

    async def confirm(
        self,
        payment_id: str,
        otp: str | None = None,
        device_signature: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Payment:
        """Answer a step-up challenge (``next_action.type`` ``otp`` or ``device_signature``)."""
        body = {"otp": otp, "device_signature": device_signature}
        key = idempotency_key or new_idempotency_key()
        path = f"/v1/payments/{path_id(payment_id)}/confirm"
        return await self._call("POST", path, Payment, body=body, idempotency_key=key)

    async def capture(
        self, payment_id: str, amount_to_capture: int | None = None, *, idempotency_key: str | None = None
    ) -> Payment:
        key = idempotency_key or new_idempotency_key()
        path = f"/v1/payments/{path_id(payment_id)}/capture"
        body = {"amount_to_capture": amount_to_capture}
        return await self._call("POST", path, Payment, body=body, idempotency_key=key)

    async def cancel(
        self,
        payment_id: str,
        cancellation_reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Payment:
        key = idempotency_key or new_idempotency_key()
        path = f"/v1/payments/{path_id(payment_id)}/cancel"
        body = {"cancellation_reason": cancellation_reason}
        return await self._call("POST", path, Payment, body=body, idempotency_key=key)


class Refunds(_Resource):
    async def create(
        self,
        *,
        payment: str,
        amount: int | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Refund:
        body = {
            "payment": payment,
            "amount": amount,
            "reason": reason,
            "metadata": dict(metadata) if metadata is not None else None,
        }
        key = idempotency_key or new_idempotency_key()
        return await self._call("POST", "/v1/refunds", Refund, body=body, idempotency_key=key)

    async def get(self, refund_id: str) -> Refund:
        return await self._call("GET", f"/v1/refunds/{path_id(refund_id)}", Refund)

    def list(
        self,
        payment: str | None = None,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[Refund]:
        """Refunds newest first; of one payment with ``payment``."""
        return self._list(
            "/v1/refunds", Refund, payment=payment, **_page_params(limit, starting_after, ending_before)
        )


class Accounts(_Resource):
    async def create(
        self, currency: str, customer: str | None = None, *, metadata: Mapping[str, str] | None = None
    ) -> Account:
        """A stored-balance account. Not retried once it may have reached the hub (no key to dedupe)."""
        body = {
            "currency": currency,
            "customer": customer,
            "metadata": dict(metadata) if metadata is not None else None,
        }
        return await self._call("POST", "/v1/accounts", Account, body=body)

    async def get(self, account_id: str) -> Account:
        return await self._call("GET", f"/v1/accounts/{path_id(account_id)}", Account)

    def entries(
        self,
        account_id: str,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[LedgerEntry]:
        """The ledger statement, newest first."""
        path = f"/v1/accounts/{path_id(account_id)}/entries"
        return self._list(path, LedgerEntry, **_page_params(limit, starting_after, ending_before))

    async def topup(
        self,
        account_id: str,
        *,
        amount: int,
        currency: str,
        payment_method: Mapping[str, Any],
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """Fund the balance by card or bank transfer: a Payment whose ``destination`` is the account."""
        body = {
            "amount": amount,
            "currency": currency,
            "payment_method": dict(payment_method),
            "description": description,
        }
        key = idempotency_key or new_idempotency_key()
        path = f"/v1/accounts/{path_id(account_id)}/topups"
        return await self._call("POST", path, Payment, body=body, idempotency_key=key)


class Tokens(_Resource):
    async def create(self, card: Mapping[str, Any]) -> Token:
        """Vault a card (the same card and expiry answers the same token, so a retry is harmless)."""
        response = await self._client._transport.request(
            "POST", "/v1/tokens", body={"card": dict(card)}, repeatable=True
        )
        return _decode(response, Token)


class Reminders(_Resource):
    async def create(self, /, **body: Any) -> Reminder:
        """``type="bill_due", customer, biller, customer_params, lead_days?`` or
        ``type="low_balance", account, threshold, customer?``."""
        return await self._call("POST", "/v1/reminders", Reminder, body=body)

    def list(
        self,
        customer: str | None = None,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[Reminder]:
        return self._list(
            "/v1/reminders", Reminder, customer=customer, **_page_params(limit, starting_after, ending_before)
        )

    async def get(self, reminder_id: str) -> Reminder:
        return await self._call("GET", f"/v1/reminders/{path_id(reminder_id)}", Reminder)

    async def delete(self, reminder_id: str) -> Reminder:
        return await self._call("DELETE", f"/v1/reminders/{path_id(reminder_id)}", Reminder)


class PreferencesResource(_Resource):
    async def get(self, customer_id: str) -> Preferences:
        return await self._call("GET", f"/v1/customers/{path_id(customer_id)}/preferences", Preferences)

    async def put(self, customer_id: str, /, **fields: Any) -> Preferences:
        """Replace the whole object: a field left out takes its default."""
        path = f"/v1/customers/{path_id(customer_id)}/preferences"
        return await self._call("PUT", path, Preferences, body=fields)


class WebhookEndpoints(_Resource):
    async def create(
        self, *, url: str, enabled_events: Sequence[str], description: str | None = None
    ) -> WebhookEndpointWithSecret:
        """Register a receiver; the answer shows the signing ``secret`` this once."""
        body = {"url": url, "enabled_events": list(enabled_events), "description": description}
        return await self._call("POST", "/v1/webhook_endpoints", WebhookEndpointWithSecret, body=body)

    def list(
        self,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[WebhookEndpoint]:
        return self._list(
            "/v1/webhook_endpoints", WebhookEndpoint, **_page_params(limit, starting_after, ending_before)
        )

    async def get(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._call("GET", f"/v1/webhook_endpoints/{path_id(endpoint_id)}", WebhookEndpoint)

    async def delete(self, endpoint_id: str) -> DeletedWebhookEndpoint:
        path = f"/v1/webhook_endpoints/{path_id(endpoint_id)}"
        return await self._call("DELETE", path, DeletedWebhookEndpoint)

    async def rotate_secret(
        self, endpoint_id: str, expires_in: int | None = None
    ) -> WebhookEndpointWithSecret:
        path = f"/v1/webhook_endpoints/{path_id(endpoint_id)}/rotate_secret"
        body = {"expires_in": expires_in}
        return await self._call("POST", path, WebhookEndpointWithSecret, body=body)


class Events(_Resource):
    def list(
        self,
        type: str | None = None,
        object: str | None = None,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[Event]:
        return self._list(
            "/v1/events",
            Event,
            type=type,
            object=object,
            **_page_params(limit, starting_after, ending_before),
        )

    async def get(self, event_id: str) -> Event:
        return await self._call("GET", f"/v1/events/{path_id(event_id)}", Event)

    async def redeliver(self, event_id: str, endpoint: str | None = None) -> Redelivery:
        path = f"/v1/events/{path_id(event_id)}/redeliver"
        return await self._call("POST", path, Redelivery, body={"endpoint": endpoint})


class Fx(_Resource):
    async def rates(self, base: str = "USD") -> FxRates:
        return await self._call("GET", "/v1/fx/rates", FxRates, params={"base": base})

    async def quote(
        self,
        *,
        from_currency: str,
        to_currency: str,
        to_amount: int | None = None,
        from_amount: int | None = None,
    ) -> FxQuote:
        """Lock a rate for a few minutes; pay with ``fx_quote=quote.id``."""
        body = {
            "from_currency": from_currency,
            "to_currency": to_currency,
            "to_amount": to_amount,
            "from_amount": from_amount,
        }
        return await self._call("POST", "/v1/fx/quotes", FxQuote, body=body)

    async def get_quote(self, quote_id: str) -> FxQuote:
        return await self._call("GET", f"/v1/fx/quotes/{path_id(quote_id)}", FxQuote)


class Devices(_Resource):
    async def create(self, *, customer: str, device_id: str, public_key: str) -> Device:
        """Register a device's Ed25519 public key for device-signature step-up (idempotent per key)."""
        body = {"customer": customer, "device_id": device_id, "public_key": public_key}
        response = await self._client._transport.request("POST", "/v1/devices", body=body, repeatable=True)
        return _decode(response, Device)


class Reviews(_Resource):
    """The operator review queue (needs an ``operator`` certificate)."""

    def list(
        self,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPager[Review]:
        return self._list("/v1/reviews", Review, **_page_params(limit, starting_after, ending_before))

    async def approve(self, review_id: str, note: str | None = None) -> Payment:
        return await self._call(
            "POST", f"/v1/reviews/{path_id(review_id)}/approve", Payment, body={"note": note}
        )

    async def reject(self, review_id: str, note: str | None = None) -> Payment:
        return await self._call(
            "POST", f"/v1/reviews/{path_id(review_id)}/reject", Payment, body={"note": note}
        )


class AsyncPayhub:
    """The hub's API over mutual TLS.

    ::

        async with AsyncPayhub(url="https://localhost:8443", cert="acme.pem", key="acme.key",
                               cacert="ca.pem") as hub:
            payment = await hub.payments.create(amount=12850, currency="CNY", payment_method={...})

    ``p12="acme.p12"`` replaces ``cert`` + ``key``; ``ssl_context=`` replaces all of them.
    ``max_retries`` (default 3), ``backoff_base`` (0.5 s) and ``backoff_cap`` (8 s) shape the retries;
    ``timeout`` bounds each try (60 s: a card payment may wait for a slow acquirer and a reversal).
    ``on_retry(attempt, delay, reason)`` is called before each retry's wait (for logs and progress).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        cert: StrPath | None = None,
        key: StrPath | None = None,
        cacert: StrPath | None = None,
        p12: StrPath | None = None,
        p12_password: str | bytes | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        on_retry: Callable[[int, float, str], None] | None = None,
    ) -> None:
        context = ssl_context or _context(cert, key, cacert, p12, p12_password)
        self._transport = Transport(
            url,
            context,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            on_retry=on_retry,
        )
        self.url = self._transport.url
        self.billers = Billers(self)
        self.bills = Bills(self)
        self.payments = Payments(self)
        self.refunds = Refunds(self)
        self.accounts = Accounts(self)
        self.tokens = Tokens(self)
        self.reminders = Reminders(self)
        self.preferences = PreferencesResource(self)
        self.webhook_endpoints = WebhookEndpoints(self)
        self.events = Events(self)
        self.fx = Fx(self)
        self.devices = Devices(self)
        self.reviews = Reviews(self)

    @property
    def max_retries(self) -> int:
        return self._transport.max_retries

    @max_retries.setter
    def max_retries(self, value: int) -> None:
        self._transport.max_retries = value

    async def ping(self) -> Ping:
        """Who the hub thinks we are (tenant and role from the client certificate)."""
        response = await self._transport.request("GET", "/v1/ping")
        return _decode(response, Ping)

    async def openapi(self) -> dict[str, Any]:
        """The hub's OpenAPI 3.1 document."""
        response = await self._transport.request("GET", "/v1/openapi.json")
        document: dict[str, Any] = msgspec.json.decode(response.body)
        return document

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def _context(
    cert: StrPath | None,
    key: StrPath | None,
    cacert: StrPath | None,
    p12: StrPath | None,
    p12_password: str | bytes | None,
) -> ssl.SSLContext:
    return ssl_context(cert=cert, key=key, cacert=cacert, p12=p12, p12_password=p12_password)
