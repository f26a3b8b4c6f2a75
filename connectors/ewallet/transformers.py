"""E-wallet wire format ↔ core types: pure and I/O-free.

The wallet's HTTP JSON API (Alipay / WeChat Pay / PayPal style; the sandbox in
``connectors/sandbox/ewallet.py`` speaks it)::

    POST /orders                     {reference, provider, amount, currency, notify_url}
                                     → 201 {order_id, reference, status: "unpaid", qr_code | redirect_url}
                                     → 409 same reference, different order
    GET  /orders/{reference}         → 200 {order_id, reference, status: unpaid|paid|closed, …} · 404
    POST /orders/{order}/close       → 200 {status: "closed"} · 409 {error: "order_paid"}
    POST /orders/{order}/refund      {refund_reference, amount, currency} → 200 {refund_id, status}

``reference`` is our attempt id (the wallet de-duplicates on it). When the payer pays, the wallet
POSTs a signed notify ``{order_id, reference, status, amount, currency, paid_at}`` with the
``Wallet-Signature`` header (``t=…,v1=…``, HMAC-SHA256 like our own webhooks).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

import msgspec

from connectors import signed_http
from connectors.base import ConnectorResult, InvalidParams, Outcome, PaymentRequest

# The refund call is the bank's too: its wire types live in connectors.signed_http, re-exported here
# under the names this module has always had.
from connectors.signed_http import RefundReply, RefundRequest, refund_request, refund_result

__all__ = ["RefundReply", "RefundRequest", "refund_request", "refund_result"]

PEER: Final = "the wallet"
SIGNATURE_HEADER: Final = "Wallet-Signature"
PROVIDERS: Final = frozenset({"alipay", "wechat_pay", "paypal"})
DECLINE_CLOSED: Final = "wallet_order_closed"

# Order statuses. ``unpaid`` is the payer still having to act; anything unlisted is *pending*.
STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "unpaid": Outcome.REQUIRES_ACTION,
    "paid": Outcome.SUCCEEDED,
    "closed": Outcome.FAILED,
}

_CURRENCY = re.compile(r"^[A-Z]{3}$")

Provider = Literal["alipay", "wechat_pay", "paypal"]


class OrderRequest(msgspec.Struct, frozen=True):
    reference: str
    provider: str
    amount: int
    currency: str
    notify_url: str


class OrderReply(msgspec.Struct, frozen=True):
    """The wallet's view of an order; unknown fields are ignored (the wallet may add some)."""

    order_id: str
    reference: str
    status: str
    qr_code: str | None = None
    redirect_url: str | None = None


class OrderNotice(msgspec.Struct, frozen=True):
    order_id: str
    reference: str
    status: str
    amount: int | None = None  # what the payer paid: the core checks it against the attempt
    currency: str | None = None


class CloseReply(msgspec.Struct, frozen=True):
    order_id: str
    status: str


def outcome_of(status: str) -> Outcome:
    return STATUS_MAP.get(status, Outcome.PENDING)


def order_request(request: PaymentRequest, notify_url: str) -> OrderRequest:
    provider = str(request.details.get("provider", ""))
    if provider not in PROVIDERS:
        raise InvalidParams(f"wallet.provider must be one of {', '.join(sorted(PROVIDERS))}")
    if request.amount <= 0 or not _CURRENCY.match(request.currency):
        raise InvalidParams("amount must be positive and currency an ISO 4217 code")
    return OrderRequest(
        reference=request.attempt_id,
        provider=provider,
        amount=request.amount,
        currency=request.currency,
        notify_url=notify_url,
    )


def next_action(reply: OrderReply) -> dict[str, Any] | None:
    """What the payer must do: scan a QR code (Alipay, WeChat Pay) or follow a redirect (PayPal)."""
    if reply.qr_code:
        return {"type": "qr_code", "data": reply.qr_code}
    if reply.redirect_url:
        return {"type": "redirect", "url": reply.redirect_url}
    return None


def order_result(reply: OrderReply) -> ConnectorResult:
    outcome = outcome_of(reply.status)
    if outcome is Outcome.FAILED:
        return ConnectorResult(
            Outcome.FAILED,
            reply.order_id,
            decline_code=DECLINE_CLOSED,
            message="the wallet order was closed unpaid",
            raw_code=reply.status,
        )
    if outcome is Outcome.REQUIRES_ACTION:
        return ConnectorResult(Outcome.REQUIRES_ACTION, reply.order_id, next_action=next_action(reply))
    return ConnectorResult(outcome, reply.order_id, raw_code=reply.status)


def never_received() -> ConnectorResult:
    """The wallet has no order with our reference: it was never created, so nothing can be paid."""
    return signed_http.never_received("the wallet never received the order")


refund_refused: Final = functools.partial(signed_http.refund_refused, by=PEER)


def _notice_result(notice: OrderNotice) -> ConnectorResult:
    result = order_result(OrderReply(notice.order_id, notice.reference, notice.status))
    if result.outcome is Outcome.REQUIRES_ACTION:
        # A notify that the order is still unpaid says nothing new. As PENDING the core ignores it;
        # as REQUIRES_ACTION it could pull a payment that is being canceled back to requires_action.
        return ConnectorResult(Outcome.PENDING, notice.order_id, raw_code=notice.status)
    return dataclasses.replace(result, amount_captured=notice.amount or 0, currency=notice.currency)


NOTICE: Final = signed_http.SignedNotice(
    header_name=SIGNATURE_HEADER,
    model=OrderNotice,
    result=_notice_result,
    unreadable="wallet notify body is not an order notice",
)
# A verified notify → which attempt it settles and how. The body is read only once it verified.
parse_notice: Final = NOTICE.parse
