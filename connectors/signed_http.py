"""What the HTTPS JSON connectors settled by a signed callback share (bank transfer, e-wallet).

Both peers speak the same dialect: JSON over HTTPS, an ``{error, message}`` body on a 4xx, the same
refund call (``{refund_reference, amount, currency}`` → ``{refund_id, status, reason}``), and a
notice POSTed back to ``/v1/connectors/<name>/callbacks`` signed in the ``t=<unix>,v1=<hex>`` scheme
of our own webhooks (:mod:`crypto.signatures`), under a header named after the peer. What differs
(paths, the payment's own wire shapes, the words in messages) stays in each connector and is passed
in here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, NoReturn, Protocol, Self, TypeVar
from urllib.parse import quote

import msgspec

from config.settings import ConfigError, ConnectorSettings, SandboxService, Settings, split_hostport
from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    ConnectorUnavailable,
    DuplicateReference,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
    SignatureError,
)
from connectors.http import HttpReply, OutboundClient, unexpected_answer
from crypto import signatures

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps

T = TypeVar("T")

DECLINE_REFUND_REFUSED: Final = "refund_rejected"
DECLINE_NEVER_RECEIVED: Final = "connector_unavailable"

REFUND_STATUS_MAP: Final[Mapping[str, Outcome]] = {
    "succeeded": Outcome.SUCCEEDED,
    "rejected": Outcome.FAILED,
    "pending": Outcome.PENDING,
}


# ---- configuration -------------------------------------------------------------------------------


def callback_secrets(name: str, config: ConnectorSettings, *, received: str = "callbacks") -> list[str]:
    """The secrets a callback may be signed with: current first, then the one being rotated out.

    ``received`` names what the peer sends in the error message ("callbacks", "notifies").
    """
    if not config.secret:
        raise ConfigError(f"[connectors.{name}] needs a `secret` to verify the {received} it receives")
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


# ---- replies -------------------------------------------------------------------------------------


class ErrorReply(msgspec.Struct, frozen=True):
    error: str = "error"
    message: str | None = None


def decode_reply(reply: HttpReply, model: type[T], name: str, operation: str) -> T:
    """The reply body as ``model``; an unreadable one is :class:`OutcomeUnknown`, not a failure."""
    try:
        return msgspec.json.decode(reply.body, type=model)
    except msgspec.DecodeError as exc:
        # The peer answered, but not in a form we can read: whatever it did is unknown to us.
        raise OutcomeUnknown(f"{name}: unreadable answer to {operation}") from exc


def error_reason(reply: HttpReply) -> str:
    """The peer's reason for a 4xx (what its error body says), for messages and raw codes."""
    try:
        return msgspec.json.decode(reply.body, type=ErrorReply).error
    except msgspec.DecodeError:
        return f"http_{reply.status}"


def never_received(message: str) -> ConnectorResult:
    """The peer has no record of our reference: nothing was ever started, so nothing moved."""
    return ConnectorResult(Outcome.FAILED, decline_code=DECLINE_NEVER_RECEIVED, message=message)


# ---- refunds (the same call at the bank and at the wallet) ---------------------------------------


class RefundRequest(msgspec.Struct, frozen=True):
    refund_reference: str
    amount: int
    currency: str


class RefundReply(msgspec.Struct, frozen=True):
    refund_id: str
    status: str
    reason: str | None = None


def refund_request(attempt_id: str, amount: int, currency: str) -> RefundRequest:
    """The refund attempt's id is the reference the peer de-duplicates on: retries are safe."""
    return RefundRequest(refund_reference=attempt_id, amount=amount, currency=currency)


def refund_result(reply: RefundReply) -> ConnectorResult:
    outcome = REFUND_STATUS_MAP.get(reply.status, Outcome.PENDING)
    if outcome is Outcome.FAILED:
        return ConnectorResult(
            Outcome.FAILED, reply.refund_id, decline_code=DECLINE_REFUND_REFUSED, raw_code=reply.reason
        )
    return ConnectorResult(outcome, reply.refund_id)


def refund_refused(reason: str, *, by: str) -> ConnectorResult:
    """A refund the peer turned down (``by`` names it: "the bank", "the wallet")."""
    return ConnectorResult(
        Outcome.FAILED, decline_code=DECLINE_REFUND_REFUSED, message=f"refused by {by}", raw_code=reason
    )


# ---- signed notices ------------------------------------------------------------------------------


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


class Notice(Protocol):
    @property
    def reference(self) -> str:  # our attempt id
        ...


N = TypeVar("N", bound=Notice)


@dataclass(frozen=True)
class SignedNotice(Generic[N]):
    """How one peer signs, shapes and means the notices it POSTs back.

    ``header_name`` carries the signature, ``model`` is the body, ``result`` says what a notice
    means for the attempt it names, and ``unreadable`` words a body that verified but cannot be read
    (e.g. "bank callback body is not a transfer notice").
    """

    header_name: str
    model: type[N]
    result: Callable[[N], ConnectorResult]
    unreadable: str

    def read(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *, now: int | None = None
    ) -> N:
        """The notice in ``body``, read only once its signature verified.

        Authentic but unreadable is the peer's bug, never a reason to act: :class:`InvalidParams`.
        """
        verify_signature(headers, body, secrets, header_name=self.header_name, now=now)
        try:
            return msgspec.json.decode(body, type=self.model)
        except msgspec.DecodeError as exc:
            raise InvalidParams(f"{self.unreadable}: {exc}") from exc

    def parse(
        self, headers: Mapping[str, str], body: bytes, secrets: Sequence[str], *, now: int | None = None
    ) -> CallbackNotice:
        """A verified notice → which attempt it settles and how."""
        notice = self.read(headers, body, secrets, now=now)
        return CallbackNotice(attempt_id=notice.reference, result=self.result(notice))


# ---- the connector -------------------------------------------------------------------------------


class SignedCallbackConnector:
    """The plumbing of a connector whose peer answers over HTTPS and settles by signed callback.

    A subclass names its sandbox service (the default endpoint) and what its peer calls the
    callbacks, and implements the payment operations with the helpers here.
    """

    sandbox_service: ClassVar[SandboxService]  # settings.sandbox.url(...) when no endpoint is configured
    received: ClassVar[str] = "callbacks"  # what the peer sends, for the missing-secret message

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
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> Self:
        settings = deps.settings
        return cls(
            name,
            config,
            deps.http,
            endpoint=config.endpoint or settings.sandbox.url(cls.sandbox_service),
            callback_url=callback_url(name, config, settings),
            secrets=callback_secrets(name, config, received=cls.received),
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

    def _decode(self, reply: HttpReply, model: type[T], operation: str) -> T:
        return decode_reply(reply, model, self.name, operation)

    def _authorize_refused(self, reply: HttpReply, attempt_id: str, *, noun: str) -> NoReturn:
        """Raise what an authorize answer other than an accepted one means (``noun``: "transfer", "order").

        Only the refusals the peer documents as "not accepted, nothing done" are definite (400/422,
        409). Anything else — 204, 401, 403, 404, 408, 429, … — came from a peer that got the request,
        so the outcome is unknown: the payment waits for the status inquiry under this attempt id and
        is never routed to another connector (which would charge it twice if this one acted).
        """
        reason = error_reason(reply)
        if reply.status == 409:
            raise DuplicateReference(f"{self.name}: reference {attempt_id} names another {noun}")
        if reply.status in (400, 422):
            raise InvalidParams(f"{self.name}: {noun} refused ({reason})")
        raise unexpected_answer(self.name, "authorize", reply, reason)

    def _void_refused(
        self, reply: HttpReply, reference: str, *, noun: str, paid: type[InvalidParams]
    ) -> NoReturn:
        """Raise what a close/cancel answer other than 200 means (``noun``: "transfer", "order").

        409: the payer paid meanwhile (``paid``): the callback or the status poll settles the payment.
        Anything else changed nothing a retry could not: closing moves no money whatever the peer did
        (one closed anyway fails by the status inquiry; one still open can be paid or closed again),
        so it is "retry" and the payment stays as it was. A 5xx or no answer is OutcomeUnknown from
        the outbound client, as for every call.
        """
        reason = error_reason(reply)
        if reply.status == 409:
            raise paid(f"{self.name}: {noun} {reference} is already paid ({reason})")
        if reply.status == 404:
            raise InvalidParams(f"{self.name}: no {noun} {reference} at the peer")
        raise ConnectorUnavailable(f"{self.name}: HTTP {reply.status} on void ({reason})")

    async def _refund(
        self, path: str, *, attempt_id: str, amount: int, currency: str, refused_by: str
    ) -> ConnectorResult:
        """POST the refund to ``path``; the peer de-duplicates on the refund attempt's id."""
        body = refund_request(attempt_id, amount, currency)
        reply = await self._call("refund", "POST", path, json=msgspec.to_builtins(body))
        if reply.status == 200:
            return refund_result(self._decode(reply, RefundReply, "refund"))
        reason = error_reason(reply)
        if reply.status in (404, 409, 422):
            return refund_refused(reason, by=refused_by)
        if reply.status == 400:
            raise InvalidParams(f"{self.name}: refund refused ({reason})")
        # The refund may have been made: it stays pending with its amount held, never "failed"
        # (which would free the amount for a second refund).
        raise unexpected_answer(self.name, "refund", reply, reason)

    def _inquiry_failed(self, reply: HttpReply) -> NoReturn:
        """A status inquiry answered with a status that says nothing: still unknown, ask again later."""
        raise unexpected_answer(self.name, "status inquiry", reply)
