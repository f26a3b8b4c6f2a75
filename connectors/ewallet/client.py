"""The e-wallet connector: an order the payer pays by QR code or redirect, settled by a signed notify.

``authorize`` opens an order and answers ``requires_action`` with the QR code (Alipay, WeChat Pay) or
the redirect URL (PayPal). When the payer pays, the wallet POSTs a signed notify to
``/v1/connectors/<name>/callbacks``; the resolver's status inquiry (:meth:`EwalletConnector.sync`)
covers a lost notify, and an order the wallet closed on time-out fails the payment
(``wallet_order_closed``). Canceling the payment closes the order (:meth:`EwalletConnector.void`).

Options (``[connectors.<name>]``): ``secret`` (required), ``options.previous_secret``,
``options.callback_base`` and ``endpoint``, as for the bank transfer connector.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import msgspec

from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
    PaymentRequest,
)
from connectors.ewallet import transformers as wire
from connectors.signed_http import SignedCallbackConnector


class OrderAlreadyPaid(InvalidParams):
    """The order cannot be closed because the payer has paid it: the payment is settling, not void."""

    code = "wallet_order_paid"


class EwalletConnector(SignedCallbackConnector):
    """Every call is safe to retry: orders and refunds are de-duplicated on our references, reads
    and closes change nothing the second time (so :meth:`_call` keeps its ``idempotent`` default)."""

    methods = frozenset({"wallet"})
    sandbox_service = "ewallet"
    received = "notifies"

    @property
    def notify_url(self) -> str:
        """The wallet's name for :attr:`callback_url`."""
        return self._callback_url

    async def authorize(self, request: PaymentRequest) -> ConnectorResult:
        body = wire.order_request(request, self._callback_url)
        reply = await self._call("authorize", "POST", "/orders", json=msgspec.to_builtins(body))
        if reply.status in (200, 201):
            result = wire.order_result(self._decode(reply, wire.OrderReply, "authorize"))
            if result.outcome is Outcome.REQUIRES_ACTION and result.next_action is None:
                raise OutcomeUnknown(f"{self.name}: the order came back without a QR code or redirect")
            return result
        self._authorize_refused(reply, request.attempt_id, noun="order")

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult:
        raise InvalidParams("a wallet payment is captured when the payer pays; there is nothing to capture")

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult:
        """Close the unpaid order, so the payer can no longer pay it."""
        reply = await self._call("void", "POST", f"/orders/{quote(reference, safe='')}/close")
        if reply.status == 200:
            closed = self._decode(reply, wire.CloseReply, "void")
            return ConnectorResult(Outcome.SUCCEEDED, closed.order_id, raw_code=closed.status)
        self._void_refused(reply, reference, noun="order", paid=OrderAlreadyPaid)

    async def refund(self, *, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        path = f"/orders/{quote(reference, safe='')}/refund"
        return await self._refund(
            path, attempt_id=attempt_id, amount=amount, currency=currency, refused_by=wire.PEER
        )

    async def sync(self, *, attempt_id: str, operation: str) -> ConnectorResult:
        """Order status by our reference. Still unpaid answers REQUIRES_ACTION: nothing new for the core."""
        if operation != "authorize":
            raise InvalidParams(f"a wallet payment has no {operation} to inquire about")
        reply = await self._call("sync", "GET", f"/orders/{quote(attempt_id, safe='')}")
        if reply.status == 200:
            return wire.order_result(self._decode(reply, wire.OrderReply, "sync"))
        if reply.status == 404:
            return wire.never_received()
        self._inquiry_failed(reply)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice:
        return wire.parse_notice(headers, body, self._secrets)
