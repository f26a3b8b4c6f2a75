"""E-wallet simulator (DESIGN §3 port 9705, §8, §12): Alipay / WeChat Pay QR codes, PayPal redirects.

API (JSON over HTTP; fault knobs at ``POST /faults``)::

    POST /orders                      {reference, provider, amount, currency, notify_url}
                                      → 201 {order_id, reference, status: "unpaid", qr_code | redirect_url, …}
                                      → 200 the same order again when the reference is known
                                      → 409 {error: "duplicate_reference"} known reference, other details
    GET  /orders/{ref}                → 200 the order (by our reference or the wallet's order_id) · 404
    POST /orders/{ref}/close          → 200 {order_id, status: "closed"} · 409 {error: "order_paid"}
    POST /orders/{ref}/refund         {refund_reference, amount, currency} → 200 {refund_id, status, …}
    POST /simulate/pay/{order}        the payer pays now (DESIGN §12) → 200 · 409 {error: "order_closed"}
    GET  /checkout/{order}            the page a QR code / redirect leads to, with a "pay" button
    POST /simulate/config             {"pay_after": seconds | null (no auto-pay), "order_timeout": seconds}
    GET  /book                        {"orders": [...]}: what the wallet collected, by reference (exempt
                                      from the fault knobs; see connectors.sandbox.books)

Alipay and WeChat Pay orders answer a ``qr_code``; PayPal a ``redirect_url``. Every order is paid by
the simulated payer ``pay_after`` seconds after it was opened (1 s by default; ``None`` disables it);
an order still unpaid after ``order_timeout`` (15 min) closes itself. On payment the wallet POSTs the
signed notify ``{order_id, reference, status: "paid", amount, currency, provider, paid_at}`` with
``Wallet-Signature: t=…,v1=…`` (``[connectors.ewallet] secret``) to ``notify_url``, over mutual TLS
with the ``sandbox`` client certificate, retried on failure like the bank's callbacks.
"""

from __future__ import annotations

import asyncio
import html
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web

from config.settings import Settings
from connectors.sandbox.common import (
    Amount,
    Book,
    CallbackSimulator,
    Currency,
    Delivery,
    Records,
    Reference,
    Refund,
    RefundIn,
    RefundRules,
    book_response,
    decode_body,
    error_response,
    refund,
    refundable_entry,
)

PAY_AFTER: Final = 1.0
ORDER_TIMEOUT: Final = 900.0
SIGNATURE_HEADER: Final = "Wallet-Signature"
CONNECTOR: Final = "ewallet"
MAX_ORDERS: Final = 100_000
REFUNDS: Final = RefundRules(
    refundable_status="paid",
    not_refundable="order_not_paid",
    too_much="amount_exceeds_order",
    id_prefix="wrf_",
)
QR_PROVIDERS: Final = frozenset({"alipay", "wechat_pay"})


class OrderIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reference: Reference
    provider: Literal["alipay", "wechat_pay", "paypal"]
    amount: Amount
    currency: Currency
    notify_url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]


class ConfigIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pay_after: Annotated[float, msgspec.Meta(ge=0)] | msgspec.UnsetType | None = msgspec.UNSET
    order_timeout: Annotated[float, msgspec.Meta(gt=0)] | None = None


def _rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Order:
    order_id: str
    reference: str
    provider: str
    amount: int
    currency: str
    notify_url: str
    checkout_url: str
    expires_at: float  # Unix time
    status: Literal["unpaid", "paid", "closed"] = "unpaid"
    paid_at: float | None = None
    refunded: int = 0
    refunds: dict[str, Refund] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        if self.status == "unpaid" and now >= self.expires_at:
            self.status = "closed"

    def view(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "order_id": self.order_id,
            "reference": self.reference,
            "provider": self.provider,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "expires_at": _rfc3339(self.expires_at),
            "paid_at": _rfc3339(self.paid_at) if self.paid_at is not None else None,
            "refunded": self.refunded,
        }
        if self.status == "unpaid":
            key = "qr_code" if self.provider in QR_PROVIDERS else "redirect_url"
            view[key] = self.checkout_url
        return view

    def notice(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "reference": self.reference,
            "status": self.status,
            "amount": self.amount,
            "currency": self.currency,
            "provider": self.provider,
            "paid_at": _rfc3339(self.paid_at) if self.paid_at is not None else None,
        }

    def same_request(self, params: OrderIn) -> bool:
        mine = (self.provider, self.amount, self.currency)
        return (params.provider, params.amount, params.currency) == mine


class EwalletSandbox(CallbackSimulator):
    """The wallet. ``pay_after`` (seconds, or None: never) and ``order_timeout`` are public knobs,
    read when an order is opened. ``port=0`` listens on a free port: read ``.port`` after :meth:`start`."""

    def __init__(
        self,
        settings: Settings,
        *,
        pay_after: float | None = PAY_AFTER,
        order_timeout: float = ORDER_TIMEOUT,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(
            settings, service="ewallet", header=SIGNATURE_HEADER, connector=CONNECTOR, host=host, port=port
        )
        self.pay_after = pay_after
        self.order_timeout = order_timeout
        self.orders: Records[Order] = Records(MAX_ORDERS, lambda o: o.order_id)
        self.app.router.add_post("/orders", self._create)
        self.app.router.add_get("/orders/{ref}", self._get)
        self.app.router.add_post("/orders/{ref}/close", self._close)
        self.app.router.add_post("/orders/{ref}/refund", self._refund)
        self.app.router.add_post("/simulate/pay/{ref}", self._simulate_pay)
        self.app.router.add_post("/simulate/notify/{ref}", self._simulate_notify)
        self.app.router.add_get("/checkout/{ref}", self._checkout)
        self.app.router.add_post("/simulate/config", self._config)
        self.app.router.add_get("/book", self._book)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def forget(self) -> None:
        super().forget()
        self.orders = Records(MAX_ORDERS, lambda o: o.order_id)

    def find(self, ref: str) -> Order | None:
        """By our reference or by the wallet's order id; an order past its time-out is closed here."""
        order = self.orders.find(ref)
        if order is not None:
            order.expire(time.time())
        return order

    def book_view(self) -> Book:
        """Every order the wallet remembers, oldest first (the oldest beyond MAX_ORDERS forgotten);
        an order past its time-out shows as closed, as it would on any other read."""
        now = time.time()
        orders = []
        for order in self.orders.values():
            order.expire(now)
            orders.append(
                refundable_entry(
                    order,
                    reference=order.reference,
                    own_id=("order_id", order.order_id),
                    paid=REFUNDS.refundable_status,
                )
            )
        return {"orders": orders}

    async def _book(self, request: web.Request) -> web.Response:
        return book_response(self.book_view())

    async def _create(self, request: web.Request) -> web.Response:
        params: OrderIn = await decode_body(request, OrderIn)
        known = self.orders.get(params.reference)  # de-duplicated on the merchant's reference only
        if known is not None:
            known.expire(time.time())
            if not known.same_request(params):
                return error_response(409, "duplicate_reference", "reference already used for another order")
            return web.json_response(known.view(), status=200)
        order_id = "ord_" + secrets.token_hex(10)
        order = Order(
            order_id=order_id,
            reference=params.reference,
            provider=params.provider,
            amount=params.amount,
            currency=params.currency,
            notify_url=params.notify_url,
            checkout_url=f"{self.base_url}/checkout/{order_id}",
            expires_at=time.time() + self.order_timeout,
        )
        self.orders.remember(order)
        if self.pay_after is not None:
            self._spawn(self._pay_later(order, self.pay_after))
        return web.json_response(order.view(), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        order = self.find(request.match_info["ref"])
        if order is None:
            return error_response(404, "order_not_found")
        return web.json_response(order.view())

    async def _close(self, request: web.Request) -> web.Response:
        order = self.find(request.match_info["ref"])
        if order is None:
            return error_response(404, "order_not_found")
        if order.status == "paid":
            return error_response(409, "order_paid", "a paid order cannot be closed; refund it")
        order.status = "closed"
        return web.json_response({"order_id": order.order_id, "status": order.status})

    async def _refund(self, request: web.Request) -> web.Response:
        params: RefundIn = await decode_body(request, RefundIn)
        order = self.find(request.match_info["ref"])
        if order is None:
            return error_response(404, "order_not_found")
        return refund(order, params, REFUNDS)

    async def _simulate_pay(self, request: web.Request) -> web.Response:
        order = self.find(request.match_info["ref"])
        if order is None:
            return error_response(404, "order_not_found")
        if order.status == "closed":
            return error_response(409, "order_closed")
        self.pay(order)
        return web.json_response(order.view())

    async def _checkout(self, request: web.Request) -> web.Response:
        order = self.find(request.match_info["ref"])
        if order is None:
            return error_response(404, "order_not_found")
        amount = html.escape(f"{order.amount} {order.currency}")
        action = html.escape(f"/simulate/pay/{order.order_id}")
        page = (
            f"<!doctype html><title>Sandbox {html.escape(order.provider)}</title>"
            f"<p>Order {html.escape(order.order_id)}: {amount} — {html.escape(order.status)}</p>"
            f'<form method="post" action="{action}"><button>Pay</button></form>'
        )
        return web.Response(text=page, content_type="text/html")

    async def _config(self, request: web.Request) -> web.Response:
        params: ConfigIn = await decode_body(request, ConfigIn)
        if params.pay_after is not msgspec.UNSET:
            self.pay_after = params.pay_after
        if params.order_timeout is not None:
            self.order_timeout = params.order_timeout
        return web.json_response({"pay_after": self.pay_after, "order_timeout": self.order_timeout})

    async def _pay_later(self, order: Order, delay: float) -> None:
        await asyncio.sleep(delay)
        order.expire(time.time())
        self.pay(order)

    def pay(self, order: Order) -> bool:
        """The payer pays an unpaid order: mark it paid and send the notify (in the background)."""
        if order.status != "unpaid":
            return False
        order.status, order.paid_at = "paid", time.time()
        self._spawn(self._notify(order))
        return True

    async def _notify(self, order: Order) -> None:
        await self.callbacks.send(order.notify_url, order.notice())

    async def _simulate_notify(self, request: web.Request) -> web.Response:
        try:
            delivery = await self.notify(request.match_info["ref"])
        except KeyError:
            return error_response(404, "order_not_found")
        return web.json_response({"delivered": delivery.status, "attempts": delivery.attempts})

    async def notify(self, ref: str) -> Delivery:
        """Send the signed notify for an order now (tests of duplicate or late notifies)."""
        order = self.find(ref)
        if order is None:
            raise KeyError(ref)
        return await self.callbacks.send(order.notify_url, order.notice())


async def start(settings: Settings) -> EwalletSandbox:
    return await EwalletSandbox(settings).start()
