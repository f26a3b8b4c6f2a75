"""What a payment connector is: the Protocol the core calls, the data it exchanges, its errors.

A connector is stateless: it translates core requests to its wire protocol and back. The core
owns persistence, idempotency, retries and routing. Every call carries the *attempt id*, which
the connector passes to its processor as the idempotency reference, so a retry or a status
inquiry can never create a second charge.

    ConnectorError                   retriable  outcome_known
    ├── InvalidParams                  no         yes   request refused, nothing happened
    ├── NoDues                         no         yes
    ├── AmountNotAllowed               no         yes
    ├── ServiceWindowClosed            yes        yes
    ├── ConnectorUnavailable           yes        yes   could not reach it: no money moved
    ├── SignatureError                 no         yes   callback/response signature invalid
    ├── DuplicateReference             no         yes
    └── OutcomeUnknown                 yes        no    sent, no answer: money may have moved

Only errors with ``outcome_known`` may fall back to another connector; ``OutcomeUnknown`` leaves
the payment ``processing`` until ``sync`` (or the connector's terminal policy) settles it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable


class ConnectorError(Exception):
    retriable: ClassVar[bool] = False
    outcome_known: ClassVar[bool] = True
    code: ClassVar[str] = "connector_error"


class InvalidParams(ConnectorError):
    code = "parameter_invalid"


class NoDues(ConnectorError):
    code = "bill_not_found"


class AmountNotAllowed(ConnectorError):
    code = "amount_not_allowed"


class ServiceWindowClosed(ConnectorError):
    retriable = True
    code = "service_window_closed"


class ConnectorUnavailable(ConnectorError):
    retriable = True
    code = "connector_unavailable"


class SignatureError(ConnectorError):
    code = "signature_invalid"


class DuplicateReference(ConnectorError):
    code = "duplicate_reference"


class OutcomeUnknown(ConnectorError):
    retriable = True
    outcome_known = False
    code = "outcome_unknown"


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"  # authorized (and captured when asked)
    FAILED = "failed"  # declined: decline_code says why
    PENDING = "pending"  # accepted, settles later (callback or sync)
    REQUIRES_ACTION = "requires_action"  # the payer must act (redirect, QR code)


@dataclass(frozen=True, slots=True)
class CardData:
    """Card data held in memory only until authorization; never logged (repr masks it)."""

    number: str
    exp_month: int
    exp_year: int
    cvc: str | None = None
    holder_name: str | None = None

    def __repr__(self) -> str:
        return f"CardData(****{self.number[-4:]}, {self.exp_month:02d}/{self.exp_year})"


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    attempt_id: str
    payment_id: str
    tenant: str
    amount: int
    currency: str
    method: str
    capture: bool = True
    card: CardData | None = None
    details: Mapping[str, Any] = field(default_factory=dict)  # bank / wallet / prepaid parameters
    customer: Mapping[str, Any] = field(default_factory=dict)
    description: str | None = None


@dataclass(frozen=True, slots=True)
class ConnectorResult:
    outcome: Outcome
    reference: str | None = None
    amount_authorized: int = 0
    amount_captured: int = 0
    decline_code: str | None = None
    message: str | None = None
    raw_code: str | None = None
    next_action: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallbackNotice:
    """A verified asynchronous notice: which attempt it concerns and what it says."""

    attempt_id: str
    result: ConnectorResult


@runtime_checkable
class PaymentConnector(Protocol):
    name: str
    methods: frozenset[str]

    async def authorize(self, request: PaymentRequest) -> ConnectorResult: ...

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult: ...

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult: ...

    async def refund(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult: ...

    async def sync(self, *, attempt_id: str, operation: str) -> ConnectorResult: ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice: ...
