"""Typed models of the hub's resources (msgspec Structs), decoded from its JSON answers.

Forward compatible: a field the hub adds later is ignored, never an error; enumerations the hub may
extend (statuses, categories, event types) are plain ``str``. Timestamps are timezone-aware
:class:`datetime.datetime` (the hub sends RFC 3339 UTC), dates :class:`datetime.date`, amounts ``int``
minor units. Nested objects whose shape depends on their ``type`` (``payment_method``,
``next_action``, ``bill_posting``, an event's ``data``) are ``dict[str, Any]``.

``OPENAPI_COMPONENTS`` names each model's schema in ``GET /v1/openapi.json``; a test checks every
model against the live document (each field exists there with a compatible type, and every field
the schema requires is here).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Generic, TypeVar

import msgspec

__all__ = [
    "OPENAPI_COMPONENTS",
    "Account",
    "Balance",
    "Bill",
    "Biller",
    "CardDisplay",
    "CustomerParamSpec",
    "DeletedWebhookEndpoint",
    "Device",
    "Event",
    "Failure",
    "FxQuote",
    "FxRates",
    "LedgerEntry",
    "Model",
    "Page",
    "Payment",
    "Ping",
    "Preferences",
    "QuietHours",
    "Redelivery",
    "Refund",
    "Reminder",
    "Review",
    "Risk",
    "Token",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEndpointWithSecret",
]


class Model(msgspec.Struct, kw_only=True):
    """Base of every model: keyword-only, unknown fields ignored."""

    def to_dict(self) -> dict[str, Any]:
        """The model as JSON-ready builtins (timestamps as RFC 3339 strings)."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result


T = TypeVar("T")


class Page(msgspec.Struct, Generic[T], kw_only=True):
    """One page of a list: ``{"object": "list", "data": [...], "has_more": bool}``."""

    data: list[T]
    has_more: bool
    url: str = ""
    object: str = "list"


class Ping(Model):
    tenant: str
    role: str
    livemode: bool
    object: str = "ping"


class Risk(Model):
    score: int
    decision: str  # allow | challenge | review | block
    reasons: list[dict[str, Any]]
    ruleset: str | None = None


class Failure(Model):
    code: str
    message: str | None = None


class Payment(Model):
    id: str
    status: str  # requires_action, processing, requires_capture, under_review, succeeded, failed, canceled
    amount: int
    currency: str
    amount_captured: int
    amount_refunded: int
    capture_method: str
    payment_method: dict[str, Any]
    customer: dict[str, Any] | None
    risk: Risk | None
    next_action: dict[str, Any] | None
    bill_posting: dict[str, Any] | None
    connector: str | None
    connector_reference: str | None
    failure: Failure | None
    description: str | None
    metadata: dict[str, str]
    created: datetime
    updated: datetime
    destination: str | None = None
    fx: dict[str, Any] | None = None
    object: str = "payment"

    @property
    def final(self) -> bool:
        """True once the payment can no longer change by itself (succeeded, failed or canceled)."""
        return self.status in {"succeeded", "failed", "canceled"}


class Refund(Model):
    id: str
    payment: str
    amount: int
    currency: str
    status: str  # pending | succeeded | failed
    reason: str | None
    failure: Failure | None
    metadata: dict[str, str]
    created: datetime
    object: str = "refund"


class Balance(Model):
    available: int
    pending: int


class Account(Model):
    id: str
    currency: str
    customer: str | None
    balance: Balance
    metadata: dict[str, str]
    created: datetime
    object: str = "account"


class LedgerEntry(Model):
    id: str
    transaction: str
    type: str
    amount: int
    currency: str
    bucket: str  # available | pending
    payment: str | None
    refund: str | None
    created: datetime
    object: str = "ledger_entry"


class CardDisplay(Model):
    brand: str
    bin: str
    last4: str
    exp_month: int
    exp_year: int


class Token(Model):
    id: str
    type: str
    card: CardDisplay
    created: datetime
    object: str = "token"


class CustomerParamSpec(Model):
    name: str
    regex: str
    description: str


class Biller(Model):
    id: str
    name: str
    category: str
    country: str
    currency: str
    customer_params: list[CustomerParamSpec]
    fetch: str  # required | optional | none
    amount_exactness: str  # exact | exact_or_above | exact_or_below | any
    denominations: list[int]
    object: str = "biller"


class Bill(Model):
    bill_ref: str
    biller: str
    amount_due: int
    currency: str
    due_date: date
    customer_name: str
    object: str = "bill"


class Event(Model):
    id: str
    type: str
    data: dict[str, Any]
    created: datetime
    object: str = "event"

    @property
    def data_object(self) -> dict[str, Any]:
        """``data.object``: the object as it was when the event happened."""
        obj = self.data.get("object")
        return obj if isinstance(obj, dict) else {}


class WebhookEndpoint(Model):
    id: str
    url: str
    enabled_events: list[str]
    description: str | None
    status: str
    previous_secret_expires: datetime | None
    created: datetime
    object: str = "webhook_endpoint"


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    """The answer to creating an endpoint or rotating its secret: the only time ``secret`` is shown."""

    secret: str


class DeletedWebhookEndpoint(Model):
    id: str
    deleted: bool = True
    object: str = "webhook_endpoint"


class WebhookDelivery(Model):
    id: str
    event: str
    endpoint: str
    status: str  # pending | delivered | dead | canceled
    attempts: int
    next_attempt: datetime
    deadline: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    created: datetime
    object: str = "webhook_delivery"


class Redelivery(Model):
    event: str
    deliveries: list[WebhookDelivery]
    object: str = "redelivery"


class Reminder(Model):
    id: str
    type: str  # bill_due | low_balance
    customer: str | None
    biller: str | None
    customer_params: dict[str, str] | None
    lead_days: int | None
    next_run: datetime | None
    account: str | None
    threshold: int | None
    currency: str | None
    status: str  # active | deleted
    created: datetime
    object: str = "reminder"


class QuietHours(Model):
    start: str  # HH:MM
    end: str


class Preferences(Model):
    customer: str
    locale: str
    timezone: str
    default_currency: str | None
    channels: list[str]
    email: str | None
    phone: str | None
    quiet_hours: QuietHours | None
    reminder_lead_days: int
    theme: str  # light | dark | system
    font_scale: float
    updated: datetime | None
    object: str = "customer_preferences"


class FxRates(Model):
    base: str
    rates: dict[str, str]  # decimal strings: exact
    as_of: datetime
    object: str = "fx_rates"


class FxQuote(Model):
    id: str
    from_currency: str
    to_currency: str
    from_amount: int
    to_amount: int
    fee: int
    rate: str
    mid_rate: str
    spread: str
    rates_as_of: datetime
    expires_at: datetime
    used: bool
    created: datetime
    object: str = "fx_quote"


class Device(Model):
    id: str
    customer: str
    device_id: str
    created: datetime
    object: str = "device"


class Review(Model):
    id: str
    payment: str
    tenant: str
    amount: int
    currency: str
    method: str
    risk: Risk | None
    created: datetime
    object: str = "review"


OPENAPI_COMPONENTS: dict[type[Model], str] = {
    Ping: "PingResponse",
    Risk: "Risk",
    Failure: "Failure",
    Payment: "Payment",
    Refund: "Refund",
    Balance: "Balance",
    Account: "Account",
    LedgerEntry: "LedgerEntry",
    CardDisplay: "CardDisplayOut",
    Token: "Token",
    CustomerParamSpec: "CustomerParamSpec",
    Biller: "Biller",
    Bill: "Bill",
    Event: "Event",
    WebhookEndpoint: "WebhookEndpoint",
    WebhookEndpointWithSecret: "WebhookEndpointWithSecret",
    DeletedWebhookEndpoint: "DeletedWebhookEndpoint",
    WebhookDelivery: "WebhookDelivery",
    Redelivery: "Redelivery",
    Reminder: "Reminder",
    QuietHours: "QuietHours",
    Preferences: "CustomerPreferences",
    FxRates: "FxRates",
    FxQuote: "FxQuote",
    Device: "Device",
    Review: "Review",
}
