"""Request and response schemas (msgspec Structs): the handlers decode with them and the
OpenAPI document is generated from them, so the two cannot drift apart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from gateway.domain.event_types import Subscription
from gateway.domain.money import MAX_AMOUNT
from gateway.domain.webhook_urls import MAX_URL_LENGTH

# C0 controls and DEL: refused in every string (gateway/api/screen.py), stated as a pattern here.
CONTROL_CHARS = r"\x00-\x1f\x7f"
NO_CONTROLS = f"^[^{CONTROL_CHARS}]*$"


class MinorUnits(int):
    """An amount in minor units as decoded from JSON by ``decode_hook``: an integral number in
    DESIGN's range, however it is spelled (``100``, ``100.0`` and ``1e2`` are one integer, as in
    JSON Schema). ``screen_body`` turns it into a plain ``int``, so no encoder meets this type."""


def decode_hook(kind: type, value: Any) -> Any:
    if kind is not MinorUnits:
        raise NotImplementedError
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("Expected an integer amount in minor units")
    if not 1 <= value <= MAX_AMOUNT:
        raise ValueError(f"Expected an amount between 1 and {MAX_AMOUNT}")
    return MinorUnits(value)


def schema_hook(kind: type) -> dict[str, Any]:
    """JSON Schema for the custom types above (passed to ``msgspec.json.schema_components``)."""
    if kind is MinorUnits:
        return {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_AMOUNT,
            "description": "Minor units of the currency (cents, fen; yen have none).",
        }
    raise NotImplementedError


Id = Annotated[str, Meta(min_length=4, max_length=64, pattern=r"^[a-z]+_[A-Za-z0-9]+$")]
Currency = Annotated[str, Meta(min_length=3, max_length=3, pattern=r"^[A-Za-z]{3}$", examples=["CNY"])]
# Request amounts; responses carry plain ints (a refund or a capture may be 0 there). To the type
# checker an amount is an int, which is what every handler sees after ``screen_body``.
if TYPE_CHECKING:
    Amount = int
else:
    Amount = MinorUnits
AmountOut = Annotated[int, Meta(description="Minor units of the currency (cents, fen; yen have none).")]
ShortText = Annotated[str, Meta(max_length=200, pattern=NO_CONTROLS)]
Text40 = Annotated[str, Meta(min_length=1, max_length=40, pattern=NO_CONTROLS)]
Text64 = Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_CONTROLS)]
Description = Annotated[str, Meta(max_length=500, pattern=NO_CONTROLS)]
# Dict values carry no control-character pattern here: msgspec would name only the dict, while
# screen_body (gateway/api/screen.py) names the key ("metadata.order"); the OpenAPI document still
# states the rule (openapi._forbid_controls).
Metadata = Annotated[dict[Text40, Annotated[str, Meta(max_length=500)]], Meta(max_length=50)]


class Input(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of request bodies: unknown fields are refused, naming the field."""


# ---- payment methods -------------------------------------------------------------------------


class CardInput(Input):
    number: Annotated[str, Meta(min_length=12, max_length=23, pattern=r"^[0-9 -]+$")] | None = None
    exp_month: Annotated[int, Meta(ge=1, le=12)] | None = None
    exp_year: Annotated[int, Meta(ge=2000, le=2100)] | None = None
    cvc: Annotated[str, Meta(pattern=r"^[0-9]{3,4}$")] | None = None
    holder_name: ShortText | None = None
    token: Annotated[str, Meta(pattern=r"^tok_[A-Za-z0-9]{1,64}$")] | None = None


class BankTransferInput(Input):
    account_number: Annotated[str, Meta(pattern=r"^[0-9]{4,34}$")]
    bank_code: Annotated[str, Meta(max_length=20, pattern=NO_CONTROLS)] | None = None
    holder_name: ShortText | None = None


class WalletInput(Input):
    provider: Literal["alipay", "wechat_pay", "paypal"]


class BalanceInput(Input):
    account: Annotated[str, Meta(pattern=r"^acct_[A-Za-z0-9]{1,64}$")]


class PrepaidInput(Input):
    code: Text40


MethodType = Literal["card", "bank_transfer", "wallet", "balance", "prepaid"]


class PaymentMethodInput(Input):
    type: MethodType
    card: CardInput | None = None
    bank_transfer: BankTransferInput | None = None
    wallet: WalletInput | None = None
    balance: BalanceInput | None = None
    prepaid: PrepaidInput | None = None


class CustomerInput(Input):
    id: Text64 | None = None
    email: (
        Annotated[str, Meta(max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")] | None
    ) = None
    phone: Annotated[str, Meta(max_length=20, pattern=r"^\+[0-9]{6,15}$")] | None = None
    ip: Annotated[str, Meta(max_length=45, pattern=r"^[0-9A-Fa-f.:]+$")] | None = None
    device_id: Text64 | None = None
    country: Annotated[str, Meta(pattern=r"^[A-Z]{2}$")] | None = None


class BillInput(Input):
    """Pay a bill with the collected money: the hub collects, then posts to the biller."""

    biller: Annotated[str, Meta(pattern=r"^bil_[a-z0-9_]{1,60}$")]
    customer_params: dict[Text40, Annotated[str, Meta(max_length=100)]]  # values screened as metadata's
    bill_ref: Text64 | None = None


class CreatePaymentRequest(Input):
    amount: Amount
    currency: Currency
    payment_method: PaymentMethodInput
    capture_method: Literal["automatic", "manual"] = "automatic"
    customer: CustomerInput | None = None
    bill: BillInput | None = None
    # A quote (POST /v1/fx/quotes) that pays a bill in another currency: amount and currency are
    # what the quote charges; the biller gets the quote's to_amount in its own currency.
    fx_quote: Annotated[str, Meta(pattern=r"^fxq_[A-Za-z0-9]{1,64}$")] | None = None
    description: Description | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class CapturePaymentRequest(Input):
    amount_to_capture: Amount | None = None


class ConfirmPaymentRequest(Input):
    """The answer to a step-up challenge: the one-time code, or the device's signature."""

    otp: Annotated[str, Meta(pattern=r"^[0-9]{6}$")] | None = None
    device_signature: (
        Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9+/=]+$")] | None
    ) = None


class CreateDeviceRequest(Input):
    """A device's Ed25519 public key (32 bytes, base64), unlocked on the device by biometrics."""

    customer: Text64
    device_id: Text64
    public_key: Annotated[str, Meta(min_length=43, max_length=44, pattern=r"^[A-Za-z0-9+/]{43}=?$")]


class ListEntryRequest(Input):
    """An allow or deny list entry; no tenant: every tenant's payments."""

    kind: Literal["ip", "email", "customer", "device", "msisdn", "bin"]
    value: Annotated[str, Meta(min_length=1, max_length=320, pattern=r"^[!-~]+$")]
    tenant: Text64 | None = None
    note: ShortText | None = None


class ReviewDecisionRequest(Input):
    note: ShortText | None = None


class ResolveManualReviewRequest(Input):
    """An operator's answer for an attempt in the manual queue (docs/faults.md)."""

    outcome: Literal["succeeded", "failed"]
    reference: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[!-~]+$")] | None = None
    note: ShortText | None = None


class CancelPaymentRequest(Input):
    cancellation_reason: Literal["duplicate", "fraudulent", "requested_by_customer", "abandoned"] | None = (
        None
    )


class CreateRefundRequest(Input):
    payment: Annotated[str, Meta(pattern=r"^pay_[A-Za-z0-9]{1,64}$")]
    amount: Amount | None = None
    reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class CreateAccountRequest(Input):
    currency: Currency
    customer: Text64 | None = None
    metadata: Metadata = msgspec.field(default_factory=dict)


class CreateTopupRequest(Input):
    amount: Amount
    currency: Currency
    payment_method: PaymentMethodInput
    description: Description | None = None


class CreateTokenRequest(Input):
    card: CardInput


# ---- FX (gateway/api/fx.py) --------------------------------------------------------------------


class CreateFxQuoteRequest(Input):
    """Lock a rate: give what must arrive (``to_amount``, e.g. a bill's amount due) or what is paid."""

    from_currency: Currency
    to_currency: Currency
    to_amount: Amount | None = None
    from_amount: Amount | None = None


class FxQuote(Struct):
    id: str
    from_currency: str
    to_currency: str
    from_amount: int
    to_amount: int
    fee: Annotated[
        int, Meta(description="The spread kept, in from_currency minor units (part of from_amount).")
    ]
    rate: Annotated[str, Meta(description="Units of to_currency per unit of from_currency, spread included.")]
    mid_rate: Annotated[str, Meta(description="The mid-market rate the quote was priced from.")]
    spread: str
    rates_as_of: str
    expires_at: str
    used: bool
    created: str
    object: str = "fx_quote"


class FxRates(Struct):
    base: str
    rates: dict[str, str]
    as_of: str
    object: str = "fx_rates"


# ---- responses -------------------------------------------------------------------------------


class Failure(Struct):
    code: str
    message: str | None = None


class Risk(Struct):
    score: int
    decision: Literal["allow", "challenge", "review", "block"]
    reasons: list[dict[str, Any]]
    ruleset: str | None = None  # the version of the rules that decided


class Device(Struct):
    id: str
    customer: str
    device_id: str
    created: str
    object: Literal["device"] = "device"


class ListEntry(Struct):
    id: str
    list: Literal["allow", "deny"]
    kind: str
    value: str
    tenant: str | None
    note: str | None
    created_by: str
    created: str
    object: Literal["list_entry"] = "list_entry"


class Review(Struct):
    id: str
    payment: str
    tenant: str
    amount: int
    currency: str
    method: str
    risk: Risk | None
    created: str
    object: Literal["review"] = "review"


class ManualReview(Struct):
    id: str  # the attempt's id: the reference the processor or biller knows
    payment: str
    tenant: str
    operation: Literal["authorize", "capture", "void", "refund", "post_bill", "reverse_bill"]
    connector: str
    amount: int
    currency: str
    refund: str | None
    reason: str
    inquiries: int
    since: str
    object: Literal["manual_review"] = "manual_review"


class Payment(Struct):
    id: str
    status: Literal[
        "requires_action", "processing", "requires_capture", "under_review", "succeeded", "failed", "canceled"
    ]
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
    created: str
    updated: str
    destination: str | None = msgspec.field(default=None)
    fx: dict[str, Any] | None = msgspec.field(default=None)  # the quote a bill was paid with
    object: str = "payment"


class Refund(Struct):
    id: str
    payment: str
    amount: int
    currency: str
    status: Literal["pending", "succeeded", "failed"]
    reason: str | None
    failure: Failure | None
    metadata: dict[str, str]
    created: str
    object: str = "refund"


class Balance(Struct):
    available: int
    pending: int


class Account(Struct):
    id: str
    currency: str
    customer: str | None
    balance: Balance
    metadata: dict[str, str]
    created: str
    object: str = "account"


class LedgerEntry(Struct):
    id: str
    transaction: str
    type: str
    amount: int
    currency: str
    bucket: Literal["available", "pending"]
    payment: str | None
    refund: str | None
    created: str
    object: str = "ledger_entry"


class CardDisplayOut(Struct):
    brand: str
    bin: str
    last4: str
    exp_month: int
    exp_year: int


class Token(Struct):
    id: str
    type: str
    card: CardDisplayOut
    created: str
    object: str = "token"


class Event(Struct):
    id: str
    type: str
    data: dict[str, Any]
    created: str
    object: str = "event"


# ---- webhooks (gateway/api/webhooks.py, docs/webhooks.md) -----------------------------------------

WebhookUrl = Annotated[
    str, Meta(min_length=1, max_length=MAX_URL_LENGTH, examples=["https://example.com/payhub/webhooks"])
]
MAX_ROTATION_OVERLAP = 30 * 86400  # seconds: a rotation's previous secret signs for at most 30 days
EndpointId = Annotated[str, Meta(pattern=r"^we_[A-Za-z0-9]{1,64}$", examples=["we_1a2B3c4D5e6F7g8H9i0J1k2L"])]


class CreateWebhookEndpointRequest(Input):
    url: WebhookUrl
    # Event types (gateway/domain/event_types.py) or "*" for all of them.
    enabled_events: Annotated[list[Subscription], Meta(min_length=1, max_length=50)]
    description: Description | None = None


class RotateWebhookSecretRequest(Input):
    # Seconds the previous secret keeps signing too (default 24 h; 0: it stops at once).
    expires_in: Annotated[int, Meta(ge=0, le=MAX_ROTATION_OVERLAP)] | None = None


class RedeliverEventRequest(Input):
    endpoint: EndpointId | None = None  # only this endpoint's delivery; default: every endpoint's


class WebhookEndpoint(Struct):
    id: str
    url: str
    enabled_events: list[str]
    description: str | None
    status: Literal["enabled"]
    previous_secret_expires: str | None  # a rotation's previous secret signs too until then
    created: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"


class WebhookEndpointWithSecret(WebhookEndpoint, kw_only=True):
    """The creation and rotation answers: the only ones that show the signing secret."""

    secret: str


class DeletedWebhookEndpoint(Struct):
    id: str
    deleted: Literal[True] = True
    object: Literal["webhook_endpoint"] = "webhook_endpoint"


class WebhookDelivery(Struct):
    id: str
    event: str
    endpoint: str
    status: Literal["pending", "delivered", "dead", "canceled"]
    attempts: int
    next_attempt: str
    deadline: str
    last_status: int | None
    last_error: str | None
    delivered_at: str | None
    created: str
    object: Literal["webhook_delivery"] = "webhook_delivery"


class Redelivery(Struct):
    event: str
    deliveries: list[WebhookDelivery]
    object: Literal["redelivery"] = "redelivery"


class ListResponse(Struct):
    data: list[Any]
    has_more: bool
    url: str
    object: str = "list"


class ErrorBody(Struct):
    type: Literal[
        "invalid_request_error",
        "authentication_error",
        "permission_error",
        "idempotency_error",
        "rate_limit_error",
        "payment_error",
        "api_error",
    ]
    code: str
    message: str
    request_id: str
    param: str | None = None


class ErrorResponse(Struct):
    error: ErrorBody


# ---- billers (gateway/api/billers.py) --------------------------------------------------------

BillerCategory = Literal[
    "water", "electricity", "gas", "telecom_prepaid", "telecom_postpaid", "broadband", "credit_card"
]


class FetchBillsRequest(Input):
    biller: Annotated[str, Meta(min_length=1, max_length=64, pattern=NO_CONTROLS, examples=["bil_cn_power"])]
    # Values are checked by the biller catalog (type and regex), so that errors name the parameter
    # ("customer_params.account_number") rather than msgspec's "customer_params[...]".
    customer_params: Annotated[
        dict[Text40, Any],
        Meta(
            max_length=10,
            extra_json_schema={
                "additionalProperties": {"type": "string", "maxLength": 64},
                "examples": [{"account_number": "0031234567"}],
            },
        ),
    ]


class CustomerParamSpec(Struct):
    name: str
    regex: str
    description: str


class Biller(Struct):
    id: str
    name: str
    category: BillerCategory
    country: str
    currency: str
    customer_params: list[CustomerParamSpec]
    fetch: Literal["required", "optional", "none"]
    amount_exactness: Literal["exact", "exact_or_above", "exact_or_below", "any"]
    denominations: list[int]
    object: str = "biller"


class Bill(Struct):
    bill_ref: str
    biller: str
    amount_due: AmountOut
    currency: str
    due_date: Annotated[str, Meta(description="YYYY-MM-DD", examples=["2025-06-11"])]
    customer_name: Annotated[str, Meta(description="Masked by the biller connector: 'L* L*'.")]
    object: str = "bill"


# ---- notifications (gateway/api/preferences.py, gateway/api/reminders.py) ---------------------

ClockTime = Annotated[str, Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", examples=["22:00"])]
LeadDays = Annotated[int, Meta(ge=0, le=60)]


class QuietHoursInput(Input):
    """Wall-clock times in the customer's time zone; may span midnight; start and end differ."""

    start: ClockTime
    end: ClockTime


class PreferencesInput(Input):
    """The whole preferences object (PUT replaces it: a field left out takes its default)."""

    locale: (
        Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$", examples=["zh-CN"])]
        | None
    ) = None
    timezone: (
        Annotated[
            str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$", examples=["Asia/Shanghai"])
        ]
        | None
    ) = None
    default_currency: Currency | None = None
    channels: Annotated[list[Literal["email", "sms", "push", "webhook"]], Meta(max_length=4)] = msgspec.field(
        default_factory=list
    )
    email: (
        Annotated[str, Meta(max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")] | None
    ) = None
    phone: Annotated[str, Meta(max_length=16, pattern=r"^\+[1-9][0-9]{5,14}$")] | None = None
    quiet_hours: QuietHoursInput | None = None
    reminder_lead_days: LeadDays | None = None
    theme: Literal["light", "dark", "system"] | None = None
    font_scale: Annotated[float, Meta(ge=0.75, le=2.0)] | None = None


class QuietHours(Struct):
    start: str
    end: str


class CustomerPreferences(Struct):
    customer: str
    locale: str
    timezone: str
    default_currency: str | None
    channels: Annotated[list[str], Meta(description="Always includes webhook.")]
    email: str | None
    phone: str | None
    quiet_hours: QuietHours | None
    reminder_lead_days: int
    theme: Literal["light", "dark", "system"]
    font_scale: float
    updated: Annotated[str | None, Meta(description="null: never set (these are the defaults).")]
    object: str = "customer_preferences"


class CreateReminderRequest(Input):
    """``bill_due``: customer, biller, customer_params (lead_days optional). ``low_balance``:
    account, threshold (customer optional: the account's)."""

    type: Literal["bill_due", "low_balance"]
    customer: Text64 | None = None
    biller: Annotated[str, Meta(pattern=r"^bil_[a-z0-9_]{1,60}$", examples=["bil_cn_power"])] | None = None
    customer_params: (
        Annotated[
            dict[Text40, Any],
            Meta(
                max_length=10,
                extra_json_schema={
                    "additionalProperties": {"type": "string", "maxLength": 64},
                    "examples": [{"account_number": "0031234567"}],
                },
            ),
        ]
        | None
    ) = None
    lead_days: LeadDays | None = None
    account: Annotated[str, Meta(pattern=r"^acct_[A-Za-z0-9]{1,64}$")] | None = None
    threshold: Amount | None = None


class Reminder(Struct):
    id: str
    type: Literal["bill_due", "low_balance"]
    customer: str | None
    biller: str | None
    customer_params: dict[str, str] | None
    lead_days: Annotated[int | None, Meta(description="null: the customer's reminder_lead_days.")]
    next_run: Annotated[str | None, Meta(description="When the biller is asked next (bill_due).")]
    account: str | None
    threshold: AmountOut | None
    currency: str | None
    status: Literal["active", "deleted"]
    created: str
    object: str = "reminder"
