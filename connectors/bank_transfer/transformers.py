"""Bank transfer wire format ↔ core types: pure and I/O-free.

The bank's HTTPS JSON API (the sandbox in ``connectors/sandbox/bank.py`` speaks it)::

    POST /transfers                    {reference, account_number, amount, currency, callback_url}
                                       → 202 {transfer_id, reference, status: "pending"}
                                       → 200 {…, status: "rejected", reason}   (refused at once)
                                       → 409 same reference, different transfer
    GET  /transfers/{reference}        → 200 {transfer_id, reference, status, …} · 404 never received
    POST /transfers/{transfer}/refund  {refund_reference, amount, currency} → 200 {refund_id, status}

``reference`` is our attempt id: the bank de-duplicates on it, so a retried authorize can never
start a second transfer, and a status inquiry needs nothing but the attempt id. The bank's signed
callback ``{reference, status, transfer_id}`` carries the ``Bank-Signature`` header, in the
``t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`` scheme of our own webhooks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

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

SIGNATURE_HEADER: Final = "Bank-Signature"
DECLINE_REJECTED: Final = "bank_rejected"
DECLINE_REFUND_REFUSED: Final = "refund_rejected"
DECLINE_NEVER_RECEIVED: Final = "connector_unavailable"

# The bank's transfer statuses. Anything unlisted (a status added by the bank later) is *pending*:
# it never settles a payment by itself; a later callback or inquiry will.
STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "pending": Outcome.PENDING,
    "settled": Outcome.SUCCEEDED,
    "rejected": Outcome.FAILED,
}
REFUND_STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "succeeded": Outcome.SUCCEEDED,
    "rejected": Outcome.FAILED,
    "pending": Outcome.PENDING,
}

_ACCOUNT_NUMBER = re.compile(r"^[0-9]{4,34}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class TransferRequest(msgspec.Struct, frozen=True):
    reference: str
    account_number: str
    amount: int
    currency: str
    callback_url: str


class TransferReply(msgspec.Struct, frozen=True):
    """The bank's view of a transfer; unknown fields are ignored (the bank may add some)."""

    transfer_id: str
    reference: str
    status: str
    reason: str | None = None


class TransferNotice(msgspec.Struct, frozen=True):
    reference: str
    status: str
    transfer_id: str


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


def transfer_request(request: PaymentRequest, callback_url: str) -> TransferRequest:
    account = str(request.details.get("account_number", ""))
    if not _ACCOUNT_NUMBER.match(account):
        raise InvalidParams("bank_transfer.account_number must be 4 to 34 digits")
    if request.amount <= 0 or not _CURRENCY.match(request.currency):
        raise InvalidParams("amount must be positive and currency an ISO 4217 code")
    return TransferRequest(
        reference=request.attempt_id,
        account_number=account,
        amount=request.amount,
        currency=request.currency,
        callback_url=callback_url,
    )


def transfer_result(reply: TransferReply) -> ConnectorResult:
    outcome = outcome_of(reply.status)
    if outcome is Outcome.FAILED:
        return ConnectorResult(
            Outcome.FAILED,
            reply.transfer_id,
            decline_code=DECLINE_REJECTED,
            message="rejected by the bank",
            raw_code=reply.reason,
        )
    return ConnectorResult(outcome, reply.transfer_id, raw_code=reply.status)


def never_received() -> ConnectorResult:
    """The bank has no transfer with our reference: nothing was ever started, so nothing moved."""
    return ConnectorResult(
        Outcome.FAILED, decline_code=DECLINE_NEVER_RECEIVED, message="the bank never received the transfer"
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
        Outcome.FAILED, decline_code=DECLINE_REFUND_REFUSED, message="refused by the bank", raw_code=reason
    )


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that also works on a plain dict (HTTP names are case-blind)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def verify_signature(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Sequence[str],
    *,
    header_name: str,
    now: int | None = None,
) -> None:
    """Raise the connector ``SignatureError`` unless ``body`` carries a valid, fresh signature."""
    value = header(headers, header_name)
    if value is None:
        raise SignatureError(f"{header_name} header is missing")
    try:
        signatures.verify_webhook(body, value, secrets, now=now)
    except signatures.SignatureError as exc:
        raise SignatureError(str(exc)) from exc


def parse_notice(
    headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *, now: int | None = None
) -> CallbackNotice:
    """A verified callback → which attempt it settles and how. The body is read only once it verified."""
    verify_signature(headers, body, secrets, header_name=SIGNATURE_HEADER, now=now)
    try:
        notice = msgspec.json.decode(body, type=TransferNotice)
    except msgspec.DecodeError as exc:
        # Authentic but unreadable: the bank's bug, never a reason to act.
        raise InvalidParams(f"bank callback body is not a transfer notice: {exc}") from exc
    return CallbackNotice(attempt_id=notice.reference, result=transfer_result(_as_reply(notice)))


def _as_reply(notice: TransferNotice) -> TransferReply:
    return TransferReply(transfer_id=notice.transfer_id, reference=notice.reference, status=notice.status)
