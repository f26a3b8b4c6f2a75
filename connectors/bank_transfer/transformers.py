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

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Final

import msgspec

from connectors import signed_http
from connectors.base import ConnectorResult, InvalidParams, Outcome, PaymentRequest

# The refund call is the wallet's too: its wire types live in connectors.signed_http, re-exported here
# under the names this module has always had.
from connectors.signed_http import RefundReply, RefundRequest, refund_request, refund_result

__all__ = ["RefundReply", "RefundRequest", "refund_request", "refund_result"]

PEER: Final = "the bank"
SIGNATURE_HEADER: Final = "Bank-Signature"
DECLINE_REJECTED: Final = "bank_rejected"
DECLINE_CANCELED: Final = "transfer_canceled"

# The bank's transfer statuses. Anything unlisted (a status added by the bank later) is *pending*:
# it never settles a payment by itself; a later callback or inquiry will.
STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "pending": Outcome.PENDING,
    "settled": Outcome.SUCCEEDED,
    "rejected": Outcome.FAILED,
    "canceled": Outcome.FAILED,  # cancelled by us before the money arrived: it never will
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
    amount: int | None = None  # what arrived: the core checks it against the attempt
    currency: str | None = None


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
        canceled = reply.status == "canceled"
        return ConnectorResult(
            Outcome.FAILED,
            reply.transfer_id,
            decline_code=DECLINE_CANCELED if canceled else DECLINE_REJECTED,
            message="canceled before the money arrived" if canceled else "rejected by the bank",
            raw_code=reply.reason or reply.status,
        )
    return ConnectorResult(outcome, reply.transfer_id, raw_code=reply.status)


def never_received() -> ConnectorResult:
    """The bank has no transfer with our reference: nothing was ever started, so nothing moved."""
    return signed_http.never_received("the bank never received the transfer")


refund_refused: Final = functools.partial(signed_http.refund_refused, by=PEER)


def _notice_result(notice: TransferNotice) -> ConnectorResult:
    result = transfer_result(
        TransferReply(transfer_id=notice.transfer_id, reference=notice.reference, status=notice.status)
    )
    return dataclasses.replace(result, amount_captured=notice.amount or 0, currency=notice.currency)


NOTICE: Final = signed_http.SignedNotice(
    header_name=SIGNATURE_HEADER,
    model=TransferNotice,
    result=_notice_result,
    unreadable="bank callback body is not a transfer notice",
)
# A verified callback → which attempt it settles and how. The body is read only once it verified.
parse_notice: Final = NOTICE.parse
