"""Bank simulator (DESIGN §3 port 9704, §8, §12): transfers settle later, by signed callback or status poll.

API (JSON over HTTP; fault knobs at ``POST /faults``)::

    POST /transfers                   {reference, account_number, amount, currency, callback_url}
                                      → 202 {transfer_id, reference, status: "pending", …}
                                      → 200 {…, status: "rejected", reason: "account_rejected"}
                                      → 200 the same transfer again when the reference is known
                                      → 409 {error: "duplicate_reference"} known reference, other details
    GET  /transfers/{ref}             → 200 the transfer (by our reference or the bank's transfer_id) · 404
    POST /transfers/{ref}/refund      {refund_reference, amount, currency} → 200 {refund_id, status, …}
                                      (de-duplicated on refund_reference; 409 not settled / too much)
    POST /transfers/{ref}/cancel      a pending transfer → 200 status "canceled": it can no longer
                                      settle (money sent late goes back to the payer); a canceled or
                                      rejected one → 200 as it is; 409 transfer_settled · 404
    POST /simulate/settle/{ref}       settle now (the account's callback rule applies)
    POST /simulate/notify/{ref}       send the signed notice again now ({"status": …} optional, default
                                      the transfer's status): duplicate and late callbacks for tests;
                                      → 200 {"delivered": receiver's HTTP status or null, "attempts"}
    POST /simulate/config             {"settle_after": seconds}
    GET  /book                        {"transfers": [...]}: what the bank moved, by reference (exempt
                                      from the fault knobs; see connectors.sandbox.books)

Test data, by the account number's last four digits (DESIGN §12):

    0002  rejected at once (``status: rejected``); no callback
    0005  settles after ``settle_after`` but never calls back: only a status poll finds out
    0009  settles and calls back TWICE with the same signed notice (duplicate-callback test data)
    else  settles after ``settle_after`` (1 s by default) and calls back once

The callback is ``POST <callback_url>`` with the raw JSON body ``{reference, status, transfer_id, amount,
currency}`` and
``Bank-Signature: t=<unix>,v1=<HMAC-SHA256(secret, "<t>.<body>")>`` (crypto.signatures.sign_webhook),
signed with ``[connectors.bank_transfer] secret``. It is retried on failure (0.5 s, 1 s, 2 s), like a
bank would. The gateway's callback URL is HTTPS with mutual TLS: the simulator presents the client
certificate ``$PAYHUB_HOME/pki/clients/sandbox.pem``, issued from the payhub CA on first start.
"""

from __future__ import annotations

import asyncio
import math
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal

import msgspec
from aiohttp import web

from config.settings import Settings

# Shared with the e-wallet simulator (now in common); re-exported for the modules that import them here.
from connectors.sandbox.common import (
    Amount,
    Book,
    CallbackSender,
    CallbackSimulator,
    Currency,
    Delivery,
    Records,
    Reference,
    Refund,
    RefundIn,
    RefundRules,
    book_response,
    bound_port,
    client_ssl_context,
    connector_secret,
    decode_body,
    error_response,
    refund,
    refundable_entry,
)

__all__ = [
    "BankSandbox",
    "CallbackSender",
    "Delivery",
    "Refund",
    "RefundIn",
    "bound_port",
    "client_ssl_context",
    "connector_secret",
    "decode_body",
    "error_response",
    "start",
]

SETTLE_AFTER: Final = 1.0
SIGNATURE_HEADER: Final = "Bank-Signature"
CONNECTOR: Final = "bank_transfer"  # whose [connectors.<name>] secret signs the callbacks
MAX_TRANSFERS: Final = 100_000  # oldest forgotten beyond this: a long load run must not grow forever

REFUNDS: Final = RefundRules(
    refundable_status="settled",
    not_refundable="transfer_not_settled",
    too_much="amount_exceeds_transfer",
    id_prefix="rfd_",
)

REJECTED_SUFFIX: Final = "0002"
SILENT_SUFFIX: Final = "0005"
DUPLICATE_SUFFIX: Final = "0009"


class TransferIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reference: Reference
    account_number: Annotated[str, msgspec.Meta(pattern=r"^[0-9]{4,34}$")]
    amount: Amount
    currency: Currency
    callback_url: Annotated[str, msgspec.Meta(pattern=r"^https?://", max_length=2048)]


class NotifyIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    status: Literal["pending", "settled", "rejected", "canceled"] | None = None


class ConfigIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    settle_after: Annotated[float, msgspec.Meta(ge=0)] | None = None


@dataclass
class Transfer:
    transfer_id: str
    reference: str
    account_number: str
    amount: int
    currency: str
    callback_url: str
    status: Literal["pending", "settled", "rejected", "canceled"] = "pending"
    reason: str | None = None
    refunded: int = 0
    refunds: dict[str, Refund] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "transfer_id": self.transfer_id,
            "reference": self.reference,
            "status": self.status,
            "reason": self.reason,
            "amount": self.amount,
            "currency": self.currency,
            "account_last4": self.account_number[-4:],
            "refunded": self.refunded,
        }

    def notice(self, status: str | None = None) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "status": status or self.status,
            "transfer_id": self.transfer_id,
            "amount": self.amount,
            "currency": self.currency,
        }

    def same_request(self, params: TransferIn) -> bool:
        return (params.account_number, params.amount, params.currency) == (
            self.account_number,
            self.amount,
            self.currency,
        )


class BankSandbox(CallbackSimulator):
    """The bank. ``settle_after`` (seconds, public) is read when a transfer is accepted; ``math.inf``
    keeps new transfers pending until ``POST /simulate/settle/{ref}`` or :meth:`settle`.
    ``port=0`` listens on a free port: read ``.port`` after :meth:`start`."""

    def __init__(
        self,
        settings: Settings,
        *,
        settle_after: float = SETTLE_AFTER,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(
            settings, service="bank", header=SIGNATURE_HEADER, connector=CONNECTOR, host=host, port=port
        )
        self.settle_after = settle_after
        self.transfers: Records[Transfer] = Records(MAX_TRANSFERS, lambda t: t.transfer_id)
        self.app.router.add_post("/transfers", self._create)
        self.app.router.add_get("/transfers/{ref}", self._get)
        self.app.router.add_post("/transfers/{ref}/refund", self._refund)
        self.app.router.add_post("/transfers/{ref}/cancel", self._cancel)
        self.app.router.add_post("/simulate/settle/{ref}", self._simulate_settle)
        self.app.router.add_post("/simulate/notify/{ref}", self._simulate_notify)
        self.app.router.add_post("/simulate/config", self._config)
        self.app.router.add_get("/book", self._book)

    def forget(self) -> None:
        super().forget()
        self.transfers = Records(MAX_TRANSFERS, lambda t: t.transfer_id)

    def find(self, ref: str) -> Transfer | None:
        """By our reference or by the bank's transfer id."""
        return self.transfers.find(ref)

    def book_view(self) -> Book:
        """Every transfer the bank remembers, oldest first (the oldest beyond MAX_TRANSFERS forgotten)."""
        transfers = [
            refundable_entry(
                t,
                reference=t.reference,
                own_id=("transfer_id", t.transfer_id),
                paid=REFUNDS.refundable_status,
            )
            for t in self.transfers.values()
        ]
        return {"transfers": transfers}

    async def _book(self, request: web.Request) -> web.Response:
        return book_response(self.book_view())

    async def _create(self, request: web.Request) -> web.Response:
        params: TransferIn = await decode_body(request, TransferIn)
        known = self.transfers.get(params.reference)
        if known is not None:
            if not known.same_request(params):
                return error_response(409, "duplicate_reference", "reference names another transfer")
            return web.json_response(known.view(), status=202 if known.status == "pending" else 200)
        transfer = Transfer(
            transfer_id="trf_" + secrets.token_hex(10),
            reference=params.reference,
            account_number=params.account_number,
            amount=params.amount,
            currency=params.currency,
            callback_url=params.callback_url,
        )
        self.transfers.remember(transfer)
        if params.account_number.endswith(REJECTED_SUFFIX):
            transfer.status, transfer.reason = "rejected", "account_rejected"
            return web.json_response(transfer.view(), status=200)
        if math.isfinite(self.settle_after):
            self._spawn(self._settle_later(transfer, self.settle_after))
        return web.json_response(transfer.view(), status=202)

    async def _get(self, request: web.Request) -> web.Response:
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        return web.json_response(transfer.view())

    async def _refund(self, request: web.Request) -> web.Response:
        params: RefundIn = await decode_body(request, RefundIn)
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        return refund(transfer, params, REFUNDS)

    async def _cancel(self, request: web.Request) -> web.Response:
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        if transfer.status == "settled":
            return error_response(409, "transfer_settled", "the money has arrived: refund it instead")
        if transfer.status == "pending":
            transfer.status = "canceled"
        return web.json_response(transfer.view())

    async def _simulate_notify(self, request: web.Request) -> web.Response:
        params: NotifyIn = await decode_body(request, NotifyIn) if request.can_read_body else NotifyIn()
        try:
            delivery = await self.notify(request.match_info["ref"], params.status)
        except KeyError:
            return error_response(404, "transfer_not_found")
        return web.json_response({"delivered": delivery.status, "attempts": delivery.attempts})

    async def _simulate_settle(self, request: web.Request) -> web.Response:
        transfer = self.find(request.match_info["ref"])
        if transfer is None:
            return error_response(404, "transfer_not_found")
        if transfer.status == "rejected":
            return error_response(409, "transfer_rejected")
        self._spawn(self.settle(transfer))
        return web.json_response(transfer.view())

    async def _config(self, request: web.Request) -> web.Response:
        params: ConfigIn = await decode_body(request, ConfigIn)
        if params.settle_after is not None:
            self.settle_after = params.settle_after
        return web.json_response({"settle_after": self.settle_after})

    async def _settle_later(self, transfer: Transfer, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.settle(transfer)

    async def settle(self, transfer: Transfer) -> None:
        """Settle a pending transfer and call back according to the account's test-data rule."""
        if transfer.status != "pending":
            return
        transfer.status = "settled"
        account = transfer.account_number
        if account.endswith(SILENT_SUFFIX):
            return
        copies = 2 if account.endswith(DUPLICATE_SUFFIX) else 1
        for _ in range(copies):  # one after the other: the second is a true duplicate of a delivered one
            await self.callbacks.send(transfer.callback_url, transfer.notice())

    async def notify(self, ref: str, status: str | None = None) -> Delivery:
        """Send a signed notice about a transfer now, saying ``status`` (default: its current status).

        For tests of late and out-of-order notices, e.g. a "pending" after the "settled".
        """
        transfer = self.find(ref)
        if transfer is None:
            raise KeyError(ref)
        return await self.callbacks.send(transfer.callback_url, transfer.notice(status))


async def start(settings: Settings) -> BankSandbox:
    return await BankSandbox(settings).start()
