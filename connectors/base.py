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
    ├── ConnectorUnavailable           yes        yes   proven not sent: no money moved
    ├── SignatureError                 no         yes   callback/response signature invalid
    ├── DuplicateReference             no         yes
    └── OutcomeUnknown                 yes        no    (maybe) sent, no answer it can read:
                                                          money may have moved

Only ``ConnectorUnavailable`` lets routing fall back to another connector (under a fresh attempt
id), so raise it only for failures proven to have sent nothing: connection refused, DNS failure,
TLS handshake failure, connect timeout, the circuit breaker refusing before any try reached the
peer. Once the request was (possibly) written — a read timeout, a reset mid-answer, an unreadable
body, any HTTP status the connector does not explicitly map (401, 404, 429, 204, 5xx, …) — it is
``OutcomeUnknown``: the payment stays ``processing`` until ``sync`` (or the connector's terminal
policy) settles it by the same reference. The other errors with ``outcome_known`` are definite
answers (refusals the peer documents as "not accepted, nothing done", a bad signature): the call
fails, with no fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable


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
    currency: str | None = None  # when the processor says which currency it moved (callbacks do)


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


# ---- billers -----------------------------------------------------------------------------------

BillerCategory = Literal[
    "water", "electricity", "gas", "telecom_prepaid", "telecom_postpaid", "broadband", "credit_card"
]
FetchRequirement = Literal["required", "optional", "none"]
AmountExactness = Literal["exact", "exact_or_above", "exact_or_below", "any"]


@dataclass(frozen=True, slots=True)
class CustomerParam:
    name: str  # e.g. "account_number", "msisdn"
    regex: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class BillerInfo:
    id: str  # bil_…
    name: str
    category: BillerCategory
    country: str
    currency: str
    customer_params: tuple[CustomerParam, ...]
    fetch: FetchRequirement
    amount_exactness: AmountExactness
    denominations: tuple[int, ...] = ()  # fixed top-up amounts (minor units), if any
    supports_reversal: bool = True
    timezone: str = "UTC"  # IANA zone of the biller's business day (its reconciliation file's day)


@dataclass(frozen=True, slots=True)
class Bill:
    bill_ref: str
    amount_due: int
    currency: str
    due_date: date
    customer_name: str  # already masked by the connector ("L* L*")


@dataclass(frozen=True, slots=True)
class BillPayment:
    attempt_id: str  # our unique reference at the biller: retries and inquiries reuse it
    payment_id: str
    biller: str
    customer_params: Mapping[str, str]
    amount: int
    currency: str
    bill_ref: str | None = None


# A status answer's ``code`` when the biller has no record of the reference at all. Asked after our
# time-out (and again a little later), it proves the posting did not happen there, so posting again
# under the same reference is safe: the biller de-duplicates on the reference if the first one lands
# after all. A biller that lost its records in a restart answers this too.
REFERENCE_NOT_FOUND = "reference_not_found"


@dataclass(frozen=True, slots=True)
class BillPosting:
    outcome: Outcome  # SUCCEEDED, FAILED (code says why) or PENDING (ask status later)
    biller_reference: str | None = None
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class SettlementLine:
    day: date
    serial: str  # our reference (the attempt id)
    account: str
    amount: int
    status: str


@runtime_checkable
class BillerConnector(Protocol):
    name: str

    async def describe(self) -> list[BillerInfo]: ...

    async def fetch_bills(self, biller: str, customer_params: Mapping[str, str]) -> list[Bill]: ...

    async def pay(self, payment: BillPayment) -> BillPosting: ...

    async def status(self, *, attempt_id: str, biller: str) -> BillPosting: ...

    async def reverse(self, *, attempt_id: str, biller: str) -> BillPosting: ...

    async def settlement_report(self, biller: str, day: date) -> list[SettlementLine]: ...
