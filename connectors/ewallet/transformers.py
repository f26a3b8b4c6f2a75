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

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import msgspec

from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    InvalidParams,
    Outcome,
    PaymentRequest,
    SignatureError,
)
from crypto import signatures

SIGNATURE_HEADER: Final = "Wallet-Signature"
PROVIDERS: Final = frozenset({"alipay", "wechat_pay", "paypal"})
DECLINE_CLOSED: Final = "wallet_order_closed"
DECLINE_REFUND_REFUSED: Final = "refund_rejected"
DECLINE_NEVER_RECEIVED: Final = "connector_unavailable"

# Order statuses. ``unpaid`` is the payer still having to act; anything unlisted is *pending*.
STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "unpaid": Outcome.REQUIRES_ACTION,
    "paid": Outcome.SUCCEEDED,
    "closed": Outcome.FAILED,
}
REFUND_STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "succeeded": Outcome.SUCCEEDED,
    "rejected": Outcome.FAILED,
    "pending": Outcome.PENDING,
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


class CloseReply(msgspec.Struct, frozen=True):
    order_id: str
    status: str


class RefundRequest(msgspec.Struct, frozen=True):
    refund_reference: str
    amount: int
    currency: str


class RefundReply(msgspec.Struct, frozen=True):
    refund_id: str
    status: str
    reason: str | None = None


class ErrorReply(msgspec.Struct, frozen=True):
    error: str = "error"
    message: str | None = None


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
    return ConnectorResult(
        Outcome.FAILED, decline_code=DECLINE_NEVER_RECEIVED, message="the wallet never received the order"
    )


def refund_request(attempt_id: str, amount: int, currency: str) -> RefundRequest:
    return RefundRequest(refund_reference=attempt_id, amount=amount, currency=currency)


def refund_result(reply: RefundReply) -> ConnectorResult:
    outcome = REFUND_STATUS_MAP.get(reply.status, Outcome.PENDING)
    if outcome is Outcome.FAILED:
        return ConnectorResult(
            Outcome.FAILED, reply.refund_id, decline_code=DECLINE_REFUND_REFUSED, raw_code=reply.reason
        )
    return ConnectorResult(outcome, reply.refund_id)


def refund_refused(reason: str) -> ConnectorResult:
    return ConnectorResult(
        Outcome.FAILED, decline_code=DECLINE_REFUND_REFUSED, message="refused by the wallet", raw_code=reason
    )


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict (HTTP names are case-blind)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def parse_notice(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *, now: int | None = None
) -> CallbackNotice:
    """A verified notify → which attempt it settles and how. The body is read only once it verified."""
    value = header(headers, SIGNATURE_HEADER)
    if value is None:
        raise SignatureError(f"{SIGNATURE_HEADER} header is missing")
    try:
        signatures.verify_webhook(body, value, secrets, now=now)
    except signatures.SignatureError as exc:
        raise SignatureError(str(exc)) from exc
    try:
        notice = msgspec.json.decode(body, type=OrderNotice)
    except msgspec.DecodeError as exc:
        raise InvalidParams(f"wallet notify body is not an order notice: {exc}") from exc
    result = order_result(OrderReply(notice.order_id, notice.reference, notice.status))
    if result.outcome is Outcome.REQUIRES_ACTION:
        # A notify that the order is still unpaid says nothing new. As PENDING the core ignores it;
        # as REQUIRES_ACTION it could pull a payment that is being canceled back to requires_action.
        result = ConnectorResult(Outcome.PENDING, notice.order_id, raw_code=notice.status)
    return CallbackNotice(attempt_id=notice.reference, result=result)
