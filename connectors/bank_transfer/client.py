"""The bank transfer connector: HTTPS JSON to the bank, settled by its signed callback or a status poll.

A transfer is accepted as *pending* (the payment shows ``processing``); the bank then POSTs a signed
notice to ``/v1/connectors/<name>/callbacks`` on the gateway, which verifies it here
(:meth:`BankTransferConnector.parse_callback`) and settles the attempt. If the notice never comes,
the resolver's status inquiry (:meth:`~BankTransferConnector.sync`) settles it instead.

Options (``[connectors.<name>]``): ``secret`` (the shared callback secret, required),
``options.previous_secret`` (also accepted while the secret is rotated), ``options.callback_base``
(the gateway's public base URL the bank calls back; default ``https://localhost:<server.listen port>``),
``endpoint`` (the bank's base URL; default the sandbox's).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import msgspec

from config.settings import ConfigError, ConnectorSettings, Settings, split_hostport
from connectors.bank_transfer import transformers as wire
from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    ConnectorUnavailable,
    DuplicateReference,
    InvalidParams,
    OutcomeUnknown,
    PaymentRequest,
)
from connectors.http import HttpReply, OutboundClient

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps

T = TypeVar("T")


def callback_secrets(name: str, config: ConnectorSettings) -> list[str]:
    """The secrets a callback may be signed with: current first, then the one being rotated out."""
    if not config.secret:
        raise ConfigError(f"[connectors.{name}] needs a `secret` to verify the callbacks it receives")
    previous = config.options.get("previous_secret")
    return [config.secret, previous] if previous else [config.secret]


def callback_url(name: str, config: ConnectorSettings, settings: Settings) -> str:
    """Where the peer calls back: ``<callback_base>/v1/connectors/<name>/callbacks``."""
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
        # The peer answered, but not in a form we can read: whatever it did is unknown to us.
        raise OutcomeUnknown(f"{name}: unreadable answer to {operation}") from exc


def _reason(reply: HttpReply) -> str:
    """The peer's reason for a 4xx (what its error body says), for messages and raw codes."""
    try:
        return msgspec.json.decode(reply.body, type=wire.ErrorReply).error
    except msgspec.DecodeError:
        return f"http_{reply.status}"


class BankTransferConnector:
    methods = frozenset({"bank_transfer"})

    def __init__(
        self,
        name: str,
        config: ConnectorSettings,
        http: OutboundClient,
        *,
        endpoint: str,
        callback_url: str,
        secrets: list[str],
    ) -> None:
        self.name = name
        self._config = config
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self._callback_url = callback_url
        self._secrets = secrets

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> BankTransferConnector:
        settings = deps.settings
        return cls(
            name,
            config,
            deps.http,
            endpoint=config.endpoint or settings.sandbox.url("bank"),
            callback_url=callback_url(name, config, settings),
            secrets=callback_secrets(name, config),
        )

    @property
    def callback_url(self) -> str:
        return self._callback_url

    async def _call(
        self, operation: str, method: str, path: str, *, json: Any = None, idempotent: bool = True
    ) -> HttpReply:
        return await self._http.request(
            self.name,
            self._config,
            operation,
            method,
            self._endpoint + path,
            json=json,
            idempotent=idempotent,
        )

    async def authorize(self, request: PaymentRequest) -> ConnectorResult:
        body = wire.transfer_request(request, self._callback_url)
        # Safe to retry: the bank de-duplicates on the reference (our attempt id).
        reply = await self._call("authorize", "POST", "/transfers", json=msgspec.to_builtins(body))
        if reply.status in (200, 201, 202):
            return wire.transfer_result(_decode(reply, wire.TransferReply, self.name, "authorize"))
        reason = _reason(reply)
        if reply.status == 409:
            raise DuplicateReference(f"{self.name}: reference {request.attempt_id} names another transfer")
        if reply.status in (400, 422):
            raise InvalidParams(f"{self.name}: transfer refused ({reason})")
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on authorize ({reason})")

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult:
        raise InvalidParams("a bank transfer settles in full; there is nothing to capture")

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult:
        raise InvalidParams("a bank transfer cannot be voided; refund it once it has settled")

    async def refund(self, *, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        body = wire.refund_request(attempt_id, amount, currency)
        path = f"/transfers/{quote(reference, safe='')}/refund"
        # The bank de-duplicates on refund_reference (this refund attempt's id): retries are safe.
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
        """Status inquiry by our reference (the attempt id)."""
        if operation != "authorize":
            raise InvalidParams(f"a bank transfer has no {operation} to inquire about")
        reply = await self._call("sync", "GET", f"/transfers/{quote(attempt_id, safe='')}")
        if reply.status == 200:
            return wire.transfer_result(_decode(reply, wire.TransferReply, self.name, "sync"))
        if reply.status == 404:
            return wire.never_received()
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on status inquiry")

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice:
        return wire.parse_notice(headers, body, self._secrets)
