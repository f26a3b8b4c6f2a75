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
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import msgspec

from config.settings import ConfigError, ConnectorSettings, Settings, split_hostport
from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    ConnectorUnavailable,
    DuplicateReference,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
    PaymentRequest,
)
from connectors.ewallet import transformers as wire
from connectors.http import HttpReply, OutboundClient

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps

T = TypeVar("T")


class OrderAlreadyPaid(InvalidParams):
    """The order cannot be closed because the payer has paid it: the payment is settling, not void."""

    code = "wallet_order_paid"


def callback_secrets(name: str, config: ConnectorSettings) -> list[str]:
    if not config.secret:
        raise ConfigError(f"[connectors.{name}] needs a `secret` to verify the notifies it receives")
    previous = config.options.get("previous_secret")
    return [config.secret, previous] if previous else [config.secret]


def notify_url(name: str, config: ConnectorSettings, settings: Settings) -> str:
    base = config.options.get("callback_base")
    if base is None:
        _, port = split_hostport(settings.server.listen, key="server.listen")
        base = f"https://localhost:{port}"  # the dev server certificate's name
    if not base.startswith(("https://", "http://")):
        raise ConfigError(f"connectors.{name}.options.callback_base must be an http(s) URL, got {base!r}")
    return f"{base.rstrip('/')}/v1/connectors/{quote(name, safe='')}/callbacks"


def _decode(reply: HttpReply, model: type[T], name: str, operation: str) -> T:
    try:
        return msgspec.json.decode(reply.body, type=model)
    except msgspec.DecodeError as exc:
        raise OutcomeUnknown(f"{name}: unreadable answer to {operation}") from exc


def _reason(reply: HttpReply) -> str:
    try:
        return msgspec.json.decode(reply.body, type=wire.ErrorReply).error
    except msgspec.DecodeError:
        return f"http_{reply.status}"


class EwalletConnector:
    methods = frozenset({"wallet"})

    def __init__(
        self,
        name: str,
        config: ConnectorSettings,
        http: OutboundClient,
        *,
        endpoint: str,
        notify_url: str,
        secrets: list[str],
    ) -> None:
        self.name = name
        self._config = config
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self._notify_url = notify_url
        self._secrets = secrets

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> EwalletConnector:
        settings = deps.settings
        return cls(
            name,
            config,
            deps.http,
            endpoint=config.endpoint or settings.sandbox.url("ewallet"),
            notify_url=notify_url(name, config, settings),
            secrets=callback_secrets(name, config),
        )

    @property
    def notify_url(self) -> str:
        return self._notify_url

    async def _call(self, operation: str, method: str, path: str, *, json: Any = None) -> HttpReply:
        # Every call is safe to retry: orders and refunds are de-duplicated on our references,
        # reads and closes change nothing the second time.
        return await self._http.request(
            self.name, self._config, operation, method, self._endpoint + path, json=json, idempotent=True
        )

    async def authorize(self, request: PaymentRequest) -> ConnectorResult:
        body = wire.order_request(request, self._notify_url)
        reply = await self._call("authorize", "POST", "/orders", json=msgspec.to_builtins(body))
        if reply.status in (200, 201):
            result = wire.order_result(_decode(reply, wire.OrderReply, self.name, "authorize"))
            if result.outcome is Outcome.REQUIRES_ACTION and result.next_action is None:
                raise OutcomeUnknown(f"{self.name}: the order came back without a QR code or redirect")
            return result
        reason = _reason(reply)
        if reply.status == 409:
            raise DuplicateReference(f"{self.name}: reference {request.attempt_id} names another order")
        if reply.status in (400, 422):
            raise InvalidParams(f"{self.name}: order refused ({reason})")
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on authorize ({reason})")

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult:
        raise InvalidParams("a wallet payment is captured when the payer pays; there is nothing to capture")

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult:
        """Close the unpaid order, so the payer can no longer pay it."""
        reply = await self._call("void", "POST", f"/orders/{quote(reference, safe='')}/close")
        if reply.status == 200:
            closed = _decode(reply, wire.CloseReply, self.name, "void")
            return ConnectorResult(Outcome.SUCCEEDED, closed.order_id, raw_code=closed.status)
        reason = _reason(reply)
        if reply.status == 409:
            # Paid in the meantime: the notify (or the status poll) will settle the payment.
            raise OrderAlreadyPaid(f"{self.name}: order {reference} is already paid ({reason})")
        if reply.status == 404:
            raise InvalidParams(f"{self.name}: no order {reference} at the wallet")
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on void ({reason})")

    async def refund(self, *, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        body = wire.refund_request(attempt_id, amount, currency)
        path = f"/orders/{quote(reference, safe='')}/refund"
        reply = await self._call("refund", "POST", path, json=msgspec.to_builtins(body))
        if reply.status == 200:
            return wire.refund_result(_decode(reply, wire.RefundReply, self.name, "refund"))
        reason = _reason(reply)
        if reply.status in (404, 409, 422):
            return wire.refund_refused(reason)
        if reply.status == 400:
            raise InvalidParams(f"{self.name}: refund refused ({reason})")
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on refund ({reason})")

    async def sync(self, *, attempt_id: str, operation: str) -> ConnectorResult:
        """Order status by our reference. Still unpaid answers REQUIRES_ACTION: nothing new for the core."""
        if operation != "authorize":
            raise InvalidParams(f"a wallet payment has no {operation} to inquire about")
        reply = await self._call("sync", "GET", f"/orders/{quote(attempt_id, safe='')}")
        if reply.status == 200:
            return wire.order_result(_decode(reply, wire.OrderReply, self.name, "sync"))
        if reply.status == 404:
            return wire.never_received()
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on status inquiry")

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice:
        return wire.parse_notice(headers, body, self._secrets)
