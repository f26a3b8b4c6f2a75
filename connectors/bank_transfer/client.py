"""The bank transfer connector: HTTPS JSON to the bank, settled by its signed callback or a status poll.

A transfer is accepted as *pending* (the payment shows ``processing``); the bank then POSTs a signed
notice to ``/v1/connectors/<name>/callbacks`` on the gateway, which verifies it here
(:meth:`BankTransferConnector.parse_callback`) and settles the attempt. If the notice never comes,
the resolver's status inquiry (:meth:`~BankTransferConnector.sync`) settles it instead. A transfer
still pending when the connector's budget (24 h by default) is spent is cancelled at the bank
(:meth:`~BankTransferConnector.void`) and the payment ends ``canceled``.

Options (``[connectors.<name>]``): ``secret`` (the shared callback secret, required),
``options.previous_secret`` (also accepted while the secret is rotated), ``options.callback_base``
(the gateway's public base URL the bank calls back; default ``https://localhost:<server.listen port>``),
``endpoint`` (the bank's base URL; default the sandbox's).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import msgspec

from connectors.bank_transfer import transformers as wire
from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    InvalidParams,
    Outcome,
    PaymentRequest,
)
from connectors.signed_http import SignedCallbackConnector


class TransferSettled(InvalidParams):
    """The transfer cannot be cancelled because its money has arrived: the payment is settling."""

    code = "transfer_settled"


class BankTransferConnector(SignedCallbackConnector):
    methods = frozenset({"bank_transfer"})
    sandbox_service = "bank"

    async def authorize(self, request: PaymentRequest) -> ConnectorResult:
        body = wire.transfer_request(request, self._callback_url)
        # Safe to retry: the bank de-duplicates on the reference (our attempt id).
        reply = await self._call("authorize", "POST", "/transfers", json=msgspec.to_builtins(body))
        if reply.status in (200, 201, 202):
            return wire.transfer_result(self._decode(reply, wire.TransferReply, "authorize"))
        self._authorize_refused(reply, request.attempt_id, noun="transfer")

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult:
        raise InvalidParams("a bank transfer settles in full; there is nothing to capture")

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult:
        """Cancel a transfer the payer has not sent yet: the bank will not settle it any more (money
        sent late goes back to the payer). The hub's terminal policy when the payment window ends."""
        reply = await self._call("void", "POST", f"/transfers/{quote(reference, safe='')}/cancel")
        if reply.status == 200:
            transfer = self._decode(reply, wire.TransferReply, "void")
            return ConnectorResult(Outcome.SUCCEEDED, transfer.transfer_id, raw_code=transfer.status)
        self._void_refused(reply, reference, noun="transfer", paid=TransferSettled)

    async def refund(self, *, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        path = f"/transfers/{quote(reference, safe='')}/refund"
        return await self._refund(
            path, attempt_id=attempt_id, amount=amount, currency=currency, refused_by=wire.PEER
        )

    async def sync(self, *, attempt_id: str, operation: str) -> ConnectorResult:
        """Status inquiry by our reference (the attempt id)."""
        if operation != "authorize":
            raise InvalidParams(f"a bank transfer has no {operation} to inquire about")
        reply = await self._call("sync", "GET", f"/transfers/{quote(attempt_id, safe='')}")
        if reply.status == 200:
            return wire.transfer_result(self._decode(reply, wire.TransferReply, "sync"))
        if reply.status == 404:
            return wire.never_received()
        self._inquiry_failed(reply)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice:
        return wire.parse_notice(headers, body, self._secrets)
