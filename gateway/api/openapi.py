"""``GET /v1/openapi.json``: the OpenAPI 3.1 document, generated from the handlers' own Structs.

The document is built once, when the app is set up, from :data:`OPERATIONS` (a declarative table
of the routes) and the msgspec Structs the handlers decode and encode with, so the contract and
the code cannot drift apart. A test compares the table with the app's router both ways.

The Structs say what msgspec checks; :func:`build_document` then adds the rules that live in the
handlers and the input screen, so that a client (or a schema-driven fuzzer, tests/fuzz) can tell a
valid request from an invalid one by the document alone: which sub-object each
``payment_method.type`` needs, card token *or* number, no control characters in any request
string, printable-ASCII ids and cursors, currency codes, and every status each route can answer.
Links between operations (a created payment's id → capture, refund …) drive stateful clients.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, get_args

import msgspec
import orjson
from aiohttp import web

from gateway import VERSION
from gateway.api.callbacks import MAX_CALLBACK_BYTES, CallbackReceipt
from gateway.api.events import MAX_OBJECT_ID_LENGTH, MAX_TYPE_LENGTH
from gateway.api.lists import DEFAULT_LIMIT, MAX_LIMIT
from gateway.api.payments import METHODS, STATUSES
from gateway.api.ping import PingRequest, PingResponse
from gateway.api.refunds import MAX_PAYMENT_ID_LENGTH
from gateway.api.routes import CLIENT_OR_OPERATOR, add
from gateway.domain.money import EXPONENTS
from gateway.services.idempotent import MAX_KEY_LENGTH
from gateway.views import schemas

PATH = "/v1/openapi.json"
REF = "#/components/schemas/{name}"


@dataclass(frozen=True, slots=True)
class Param:
    """A query parameter: name, JSON Schema, description."""

    name: str
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True, slots=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    response: type | None  # a Struct; None: free-form JSON object
    request: type | None = None
    list_of: type | None = None  # the response is a list of these (Stripe's list object)
    query: tuple[Param, ...] = ()
    moves_money: bool = False  # requires Idempotency-Key; may answer 409/422 idempotency errors
    raw_body: int | None = None  # reads a body of at most this many bytes that no Struct describes
    conflicts: bool = False  # may answer 409 without moving money (a state or a duplicate)
    refers: bool = False  # an id in the body may name nothing of the caller's: 404
    links: dict[str, dict[str, Any]] | None = None  # OpenAPI links from the 200 answer

    @property
    def reads_body(self) -> bool:
        return self.request is not None or self.raw_body is not None

    @property
    def public(self) -> bool:
        """Called by connectors, not tenants: no identity check and no tenant budget (no 403, no 429)."""
        return self.path == CALLBACK_PATH


CALLBACK_PATH = "/v1/connectors/{name}/callbacks"
# gateway/api/screen.py: strings in bodies and queries may hold no C0 control character nor DEL;
# path parameters and list cursors are printable ASCII (anything else is a 400 naming the param).
NO_CONTROLS = schemas.NO_CONTROLS
PRINTABLE_ASCII = "^[!-~]+$"
# An all-dot segment is not an id: URL normalisation would turn ".." into the parent path.
PATH_ID = r"^(?!\.{1,2}$)[!-~]+$"
ID_PREFIXES = {
    "payments": "pay",
    "refunds": "re",
    "accounts": "acct",
    "events": "evt",
    "webhook_endpoints": "we",
    "billers": "bil",
    "reviews": "rev",
    "manual_reviews": "att",
    "admin": "rle",
    "reminders": "rem",
    "customers": "cus",  # a customer id is the tenant's own (cus_42 by convention)
    "fx": "fxq",
}
# gateway/services/payments.py (topup): a balance is funded by a card or a bank transfer only.
TOPUP_METHODS = ("bank_transfer", "card")
# gateway/api/payments.py: amount filters are 1 to 12 ASCII digits; times are RFC 3339 with a zone
# or 1 to 11 digits of Unix seconds, from 1970 to 9999.
MAX_AMOUNT_FILTER = 999_999_999_999
MAX_UNIX_SECONDS = 99_999_999_999


def _timestamp_param(name: str, bound: str) -> Param:
    return Param(
        name,
        {
            "anyOf": [
                {
                    "type": "string",
                    "format": "date-time",
                    # Years before 1970 and from 9999 on are refused (PostgreSQL's range, the epoch).
                    "pattern": r"^(19[7-9][0-9]|[2-9][0-9]{3})-",
                },
                {"type": "integer", "minimum": 0, "maximum": MAX_UNIX_SECONDS},
            ],
            "examples": ["2025-06-01T00:00:00Z", 1748736000],
        },
        f"Only objects created at or {bound} this time: RFC 3339 with a time zone, or Unix seconds.",
    )


def _text_param(name: str, description: str, *, max_length: int | None = None) -> Param:
    schema: dict[str, Any] = {"type": "string", "pattern": NO_CONTROLS}
    if max_length is not None:
        schema |= {"minLength": 1, "maxLength": max_length}
    return Param(name, schema, description)


LIST_PARAMS = (
    Param(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "How many objects to return.",
    ),
    Param(
        "starting_after",
        {"type": "string", "pattern": PRINTABLE_ASCII},
        "Cursor: an object id; the page holds the objects listed after it (older ones). "
        "An id that is not in the list answers 404.",
    ),
    Param(
        "ending_before",
        {"type": "string", "pattern": PRINTABLE_ASCII},
        "Cursor: an object id; the page holds the objects listed before it (newer ones). "
        "Not together with starting_after (400).",
    ),
)

PAYMENT_FILTERS = (
    Param("status", {"enum": sorted(STATUSES)}, "Only payments with this status."),
    Param("method", {"enum": sorted(METHODS)}, "Only payments with this payment method type."),
    _text_param("customer", "Only payments of this customer id."),
    _text_param("biller", "Only bill payments to this biller id."),
    _timestamp_param("created_gte", "after"),
    _timestamp_param("created_lte", "before"),
    Param(
        "amount_gte",
        {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT_FILTER},
        "Only payments of at least this amount (minor units, ASCII digits).",
    ),
    Param(
        "amount_lte",
        {"type": "integer", "minimum": 0, "maximum": MAX_AMOUNT_FILTER},
        "Only payments of at most this amount (minor units, ASCII digits).",
    ),
)

EVENT_FILTERS = (
    Param(
        "type",
        {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_TYPE_LENGTH,
            "pattern": NO_CONTROLS,
            "examples": ["payment.succeeded"],
        },
        "Only events of this type.",
    ),
    _text_param(
        "object", "Only events about this object id (a payment, a refund …).", max_length=MAX_OBJECT_ID_LENGTH
    ),
)


def _link(operation_id: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link; a parameter named ``body`` is the request body (a runtime expression)."""
    link: dict[str, Any] = {"operationId": operation_id}
    body = parameters.pop("body", None)
    if parameters:
        link["parameters"] = {name.replace("__", "."): value for name, value in parameters.items()}
    if body is not None:
        link["requestBody"] = orjson.loads(body)
    return link


_ID = "$response.body#/id"
_FIRST_ID = "$response.body#/data/0/id"
PAYMENT_LINKS = {
    "GetPayment": _link("getPayment", path__id=_ID),
    "CapturePayment": _link("capturePayment", path__id=_ID),
    "CancelPayment": _link("cancelPayment", path__id=_ID),
    "RefundPayment": _link("createRefund", body=f'{{"payment": "{_ID}"}}'),
    "ListPaymentEvents": _link("listEvents", query__object=_ID),
    "ListPaymentsAfter": _link("listPayments", query__starting_after=_ID),
}

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "GET", "/v1/ping", "getPing", "Who am I, as the gateway sees my certificate", "ping", PingResponse
    ),
    Operation(
        "POST", "/v1/ping", "postPing", "Echo check with a body", "ping", PingResponse, request=PingRequest
    ),
    Operation(
        "POST",
        "/v1/payments",
        "createPayment",
        "Create and confirm a payment",
        "payments",
        schemas.Payment,
        request=schemas.CreatePaymentRequest,
        moves_money=True,
        links=PAYMENT_LINKS,
    ),
    Operation(
        "GET",
        "/v1/payments",
        "listPayments",
        "Payment history, newest first",
        "payments",
        None,
        list_of=schemas.Payment,
        query=LIST_PARAMS + PAYMENT_FILTERS,
        links={
            "GetFirstPayment": _link("getPayment", path__id=_FIRST_ID),
            "PaymentsAfter": _link("listPayments", query__starting_after=_FIRST_ID),
        },
    ),
    Operation("GET", "/v1/payments/{id}", "getPayment", "Read a payment", "payments", schemas.Payment),
    Operation(
        "POST",
        "/v1/payments/{id}/capture",
        "capturePayment",
        "Capture an authorized card payment (full or partial)",
        "payments",
        schemas.Payment,
        request=schemas.CapturePaymentRequest,
        moves_money=True,
        links={name: PAYMENT_LINKS[name] for name in ("GetPayment", "RefundPayment", "CancelPayment")},
    ),
    Operation(
        "POST",
        "/v1/payments/{id}/cancel",
        "cancelPayment",
        "Cancel (void) a payment",
        "payments",
        schemas.Payment,
        request=schemas.CancelPaymentRequest,
        moves_money=True,
    ),
    Operation(
        "POST",
        "/v1/payments/{id}/confirm",
        "confirmPayment",
        "Answer a payment's step-up challenge (OTP or device signature)",
        "payments",
        schemas.Payment,
        request=schemas.ConfirmPaymentRequest,
        moves_money=True,
    ),
    Operation(
        "POST",
        "/v1/devices",
        "createDevice",
        "Register a device's Ed25519 public key for device-signature step-up",
        "risk",
        schemas.Device,
        request=schemas.CreateDeviceRequest,
        conflicts=True,
    ),
    Operation(
        "GET",
        "/v1/reviews",
        "listReviews",
        "Payments waiting for an operator's review, oldest first (operator role)",
        "risk",
        None,
        list_of=schemas.Review,
        query=LIST_PARAMS,
    ),
    Operation(
        "POST",
        "/v1/reviews/{id}/approve",
        "approveReview",
        "Release a payment held for review to its connector (operator role)",
        "risk",
        schemas.Payment,
        request=schemas.ReviewDecisionRequest,
        conflicts=True,
    ),
    Operation(
        "POST",
        "/v1/reviews/{id}/reject",
        "rejectReview",
        "Fail a payment held for review (operator role)",
        "risk",
        schemas.Payment,
        request=schemas.ReviewDecisionRequest,
        conflicts=True,
    ),
    Operation(
        "GET",
        "/v1/manual_reviews",
        "listManualReviews",
        "Attempts no automatic policy could settle, oldest first (operator role; docs/faults.md)",
        "operations",
        None,
        list_of=schemas.ManualReview,
        query=LIST_PARAMS,
    ),
    Operation(
        "POST",
        "/v1/manual_reviews/{id}/resolve",
        "resolveManualReview",
        "Record the processor's or biller's answer for an attempt in the manual queue (operator role)",
        "operations",
        schemas.Payment,
        request=schemas.ResolveManualReviewRequest,
        conflicts=True,
    ),
    Operation(
        "GET",
        "/v1/admin/lists/{list}",
        "getRiskList",
        "The allow or deny list's newest entries (operator role)",
        "risk",
        None,
        list_of=schemas.ListEntry,
        query=(LIST_PARAMS[0],),
    ),
    Operation(
        "POST",
        "/v1/admin/lists/{list}",
        "addRiskListEntry",
        "Add an entry to the allow or deny list (operator role)",
        "risk",
        schemas.ListEntry,
        request=schemas.ListEntryRequest,
    ),
    Operation(
        "DELETE",
        "/v1/admin/lists/{list}/{id}",
        "deleteRiskListEntry",
        "Remove an entry from the allow or deny list (operator role)",
        "risk",
        schemas.ListEntry,
    ),
    Operation(
        "POST",
        "/v1/refunds",
        "createRefund",
        "Refund a payment (full or partial, never more than captured)",
        "refunds",
        schemas.Refund,
        request=schemas.CreateRefundRequest,
        moves_money=True,
        links={
            "GetRefund": _link("getRefund", path__id=_ID),
            "GetRefundedPayment": _link("getPayment", path__id="$response.body#/payment"),
        },
    ),
    Operation(
        "GET",
        "/v1/refunds",
        "listRefunds",
        "Refunds, newest first (of one payment with `payment`)",
        "refunds",
        None,
        list_of=schemas.Refund,
        query=(
            *LIST_PARAMS,
            _text_param("payment", "Only refunds of this payment id.", max_length=MAX_PAYMENT_ID_LENGTH),
        ),
        links={
            "GetFirstRefund": _link("getRefund", path__id=_FIRST_ID),
            "RefundsAfter": _link("listRefunds", query__starting_after=_FIRST_ID),
        },
    ),
    Operation("GET", "/v1/refunds/{id}", "getRefund", "Read a refund", "refunds", schemas.Refund),
    Operation(
        "POST",
        "/v1/accounts",
        "createAccount",
        "Open a stored-balance account",
        "accounts",
        schemas.Account,
        request=schemas.CreateAccountRequest,
        links={
            "GetAccount": _link("getAccount", path__id=_ID),
            "ListAccountEntries": _link("listAccountEntries", path__id=_ID),
            "TopUpAccount": _link(
                "createTopup", path__id=_ID, body='{"currency": "$response.body#/currency"}'
            ),
            "PayFromAccount": _link(
                "createPayment",
                body=(
                    '{"currency": "$response.body#/currency", '
                    f'"payment_method": {{"type": "balance", "balance": {{"account": "{_ID}"}}}}}}'
                ),
            ),
        },
    ),
    Operation(
        "GET",
        "/v1/accounts/{id}",
        "getAccount",
        "Read an account and its balance",
        "accounts",
        schemas.Account,
    ),
    Operation(
        "GET",
        "/v1/accounts/{id}/entries",
        "listAccountEntries",
        "The account's ledger statement, newest first",
        "accounts",
        None,
        list_of=schemas.LedgerEntry,
        query=LIST_PARAMS,
        links={
            "EntriesAfter": _link(
                "listAccountEntries", path__id="$request.path.id", query__starting_after=_FIRST_ID
            ),
            "EntriesBefore": _link(
                "listAccountEntries", path__id="$request.path.id", query__ending_before=_FIRST_ID
            ),
        },
    ),
    Operation(
        "POST",
        "/v1/accounts/{id}/topups",
        "createTopup",
        "Fund a balance from a card or a bank transfer (answers the funding payment)",
        "accounts",
        schemas.Payment,
        request=schemas.CreateTopupRequest,
        moves_money=True,
        links={
            "GetFundingPayment": PAYMENT_LINKS["GetPayment"],
            "GetAccount": _link("getAccount", path__id="$request.path.id"),
            "ListAccountEntries": _link("listAccountEntries", path__id="$request.path.id"),
        },
    ),
    Operation(
        "POST",
        "/v1/tokens",
        "createToken",
        "Vault a card (card on file)",
        "tokens",
        schemas.Token,
        request=schemas.CreateTokenRequest,
        links={
            "PayWithToken": _link(
                "createPayment",
                body=f'{{"payment_method": {{"type": "card", "card": {{"token": "{_ID}"}}}}}}',
            )
        },
    ),
    Operation(
        "GET",
        "/v1/fx/rates",
        "getFxRates",
        "Mid-market rates per unit of base, with as_of (503 rates_stale when the feed is behind)",
        "fx",
        schemas.FxRates,
        query=(
            Param(
                "base",
                {"type": "string", "pattern": "^[A-Za-z]{3}$", "default": "USD"},
                "ISO 4217 code: rates are units of each currency per unit of this one.",
            ),
        ),
    ),
    Operation(
        "POST",
        "/v1/fx/quotes",
        "createFxQuote",
        "Lock a rate plus the spread until expires_at (503 rates_stale when rates are stale)",
        "fx",
        schemas.FxQuote,
        request=schemas.CreateFxQuoteRequest,
        links={"GetFxQuote": _link("getFxQuote", path__id=_ID)},
    ),
    Operation("GET", "/v1/fx/quotes/{id}", "getFxQuote", "Read an FX quote", "fx", schemas.FxQuote),
    Operation(
        "GET",
        "/v1/events",
        "listEvents",
        "Event log, newest first",
        "events",
        None,
        list_of=schemas.Event,
        query=LIST_PARAMS + EVENT_FILTERS,
        links={
            "GetFirstEvent": _link("getEvent", path__id=_FIRST_ID),
            "EventsAfter": _link("listEvents", query__starting_after=_FIRST_ID),
        },
    ),
    Operation("GET", "/v1/events/{id}", "getEvent", "Read an event", "events", schemas.Event),
    Operation(
        "POST",
        "/v1/events/{id}/redeliver",
        "redeliverEvent",
        "Send an event's webhooks again now, with a fresh retry window (409 when no endpoint got it)",
        "webhooks",
        schemas.Redelivery,
        request=schemas.RedeliverEventRequest,
        conflicts=True,
    ),
    Operation(
        "POST",
        "/v1/webhook_endpoints",
        "createWebhookEndpoint",
        "Register a webhook URL and its event types; the answer shows the signing secret, once",
        "webhooks",
        schemas.WebhookEndpointWithSecret,
        request=schemas.CreateWebhookEndpointRequest,
        links={
            "GetWebhookEndpoint": _link("getWebhookEndpoint", path__id=_ID),
            "RotateWebhookSecret": _link("rotateWebhookSecret", path__id=_ID),
            "DeleteWebhookEndpoint": _link("deleteWebhookEndpoint", path__id=_ID),
        },
    ),
    Operation(
        "GET",
        "/v1/webhook_endpoints",
        "listWebhookEndpoints",
        "Webhook endpoints, newest first",
        "webhooks",
        None,
        list_of=schemas.WebhookEndpoint,
        query=LIST_PARAMS,
        links={"GetFirstWebhookEndpoint": _link("getWebhookEndpoint", path__id=_FIRST_ID)},
    ),
    Operation(
        "GET",
        "/v1/webhook_endpoints/{id}",
        "getWebhookEndpoint",
        "Read a webhook endpoint (never its secret)",
        "webhooks",
        schemas.WebhookEndpoint,
    ),
    Operation(
        "DELETE",
        "/v1/webhook_endpoints/{id}",
        "deleteWebhookEndpoint",
        "Delete a webhook endpoint; its pending deliveries stop",
        "webhooks",
        schemas.DeletedWebhookEndpoint,
    ),
    Operation(
        "POST",
        "/v1/webhook_endpoints/{id}/rotate_secret",
        "rotateWebhookSecret",
        "A new signing secret (shown once); the previous one also signs until expires_in has passed",
        "webhooks",
        schemas.WebhookEndpointWithSecret,
        request=schemas.RotateWebhookSecretRequest,
    ),
    Operation(
        "POST",
        "/v1/connectors/{name}/callbacks",
        "postConnectorCallback",
        "A bank's, wallet's or biller's signed notice (authenticated by the connector's signature)",
        "connectors",
        CallbackReceipt,
        raw_body=MAX_CALLBACK_BYTES,
    ),
    Operation(
        "GET",
        "/v1/billers",
        "listBillers",
        "Biller catalog, by id",
        "billers",
        None,
        list_of=schemas.Biller,
        query=(
            *LIST_PARAMS,
            Param("category", {"enum": list(get_args(schemas.BillerCategory))}, "Only this category."),
            Param("country", {"type": "string", "pattern": "^[A-Z]{2}$"}, "Only this ISO 3166-1 country."),
        ),
        links={
            "GetFirstBiller": _link("getBiller", path__id=_FIRST_ID),
            "FetchFirstBillersBills": _link("fetchBills", body=f'{{"biller": "{_FIRST_ID}"}}'),
            "BillersAfter": _link("listBillers", query__starting_after=_FIRST_ID),
        },
    ),
    Operation(
        "GET",
        "/v1/billers/{id}",
        "getBiller",
        "Read a biller: its customer params, fetch and amount rules",
        "billers",
        schemas.Biller,
        links={"FetchBills": _link("fetchBills", body=f'{{"biller": "{_ID}"}}')},
    ),
    Operation(
        "POST",
        "/v1/bills/fetch",
        "fetchBills",
        "A customer's open bills at a biller (404 bill_not_found when none)",
        "billers",
        None,
        request=schemas.FetchBillsRequest,
        list_of=schemas.Bill,
    ),
    Operation(
        "GET",
        "/v1/customers/{id}/preferences",
        "getCustomerPreferences",
        "A customer's locale, time zone, channels and quiet hours (the defaults if never set)",
        "notifications",
        schemas.CustomerPreferences,
    ),
    Operation(
        "PUT",
        "/v1/customers/{id}/preferences",
        "putCustomerPreferences",
        "Replace a customer's preferences (a field left out takes its default)",
        "notifications",
        schemas.CustomerPreferences,
        request=schemas.PreferencesInput,
        links={"GetCustomerPreferences": _link("getCustomerPreferences", path__id="$request.path.id")},
    ),
    Operation(
        "POST",
        "/v1/reminders",
        "createReminder",
        "A bill due-date reminder or a low-balance alert (409: the account already has one)",
        "notifications",
        schemas.Reminder,
        request=schemas.CreateReminderRequest,
        conflicts=True,
        refers=True,
        links={
            "GetReminder": _link("getReminder", path__id=_ID),
            "DeleteReminder": _link("deleteReminder", path__id=_ID),
        },
    ),
    Operation(
        "GET",
        "/v1/reminders",
        "listReminders",
        "Active reminders, newest first",
        "notifications",
        None,
        list_of=schemas.Reminder,
        query=(*LIST_PARAMS, _text_param("customer", "Only this customer's reminders.", max_length=64)),
        links={"GetFirstReminder": _link("getReminder", path__id=_FIRST_ID)},
    ),
    Operation(
        "GET", "/v1/reminders/{id}", "getReminder", "Read a reminder", "notifications", schemas.Reminder
    ),
    Operation(
        "DELETE",
        "/v1/reminders/{id}",
        "deleteReminder",
        "Delete a reminder (a low-balance alert stops at once)",
        "notifications",
        schemas.Reminder,
    ),
    Operation("GET", PATH, "getOpenApi", "This OpenAPI 3.1 document", "meta", None),
)

_ERROR = {"content": {"application/json": {"schema": {"$ref": REF.format(name="ErrorResponse")}}}}
_REQUEST_ID = {"$ref": "#/components/headers/Request-Id"}
_RETRY_AFTER = {"$ref": "#/components/headers/Retry-After"}

ERROR_RESPONSES: dict[str, tuple[str, str]] = {
    # status: (component name, description)
    "400": ("InvalidRequest", "The request was refused before any processing (`param` names the field)."),
    "403": (
        "Forbidden",
        "The client certificate's identity is not accepted, or its role may not use the route. "
        "(No route answers 401: a request without a client certificate fails the TLS handshake.)",
    ),
    "404": ("NotFound", "No such object for the caller's tenant (another tenant's objects answer 404 too)."),
    "408": ("RequestTimeout", "The request body did not arrive within the server's body timeout."),
    "409": (
        "Conflict",
        "The object's state does not allow this, or the same Idempotency-Key is still running.",
    ),
    "413": ("TooLarge", "The request body is larger than the route accepts."),
    "422": ("IdempotencyKeyReused", "The Idempotency-Key was used before with a different request."),
    "429": ("RateLimited", "Too many requests: retry after Retry-After seconds."),
    "500": ("InternalError", "Internal error: it never carries a payment decision."),
    "503": (
        "Unavailable",
        "Overloaded or a dependency is down (`database_unavailable`: the database): "
        "retry after Retry-After seconds, with the same Idempotency-Key.",
    ),
}


def _error_statuses(op: Operation) -> list[str]:
    """Every error status the route can answer (gateway/middlewares.py, gateway/traffic, handlers)."""
    statuses = {"400", "500", "503"}  # bad input; a bug; shed load or a dependency down
    if not op.public:
        statuses |= {"403", "429"}  # identity and role; the tenant's rate and concurrency budgets
    if "{" in op.path or op.list_of is not None or op.moves_money:
        statuses.add("404")  # an id in the path, a list cursor, or an id in the body
    if op.moves_money:
        statuses |= {"409", "422"}  # state conflicts and idempotency
    if op.conflicts:
        statuses.add("409")
    if op.refers:
        statuses.add("404")
    if op.reads_body:
        statuses |= {"408", "413"}  # slow or large body
    return sorted(statuses)


def _path_param(op: Operation, name: str) -> dict[str, Any]:
    if name == "id":
        prefix = ID_PREFIXES[op.path.split("/")[2]]
        description = (
            f"The object's id (`{prefix}_…`). Printable ASCII (anything else is a 400); an id that "
            "matches nothing, or another tenant's object, answers 404."
        )
        example = f"{prefix}_cn_power" if prefix == "bil" else f"{prefix}_1a2B3c4D5e6F7g8H9i0J1k2L"
    elif name == "list":
        return {
            "name": name,
            "in": "path",
            "required": True,
            "description": "Which list: `allow` or `deny` (anything else: 404).",
            "schema": {"type": "string", "enum": ["allow", "deny"]},
        }
    else:
        description = "A connector's name, as in the `[connectors.<name>]` configuration; unknown: 404."
        example = "bank_transfer"
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": PATH_ID, "examples": [example]},
    }


def _operation(op: Operation, refs: dict[type, dict[str, Any]], lists: dict[type, str]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [_path_param(op, name) for name in re.findall(r"\{(\w+)\}", op.path)]
    parameters += [
        {"name": p.name, "in": "query", "required": False, "description": p.description, "schema": p.schema}
        for p in op.query
    ]
    if op.moves_money:
        parameters.append({"$ref": "#/components/parameters/Idempotency-Key"})
    headers: dict[str, Any] = {"Request-Id": _REQUEST_ID}
    if op.moves_money:
        headers["Idempotent-Replayed"] = {"$ref": "#/components/headers/Idempotent-Replayed"}
    if op.list_of is not None:
        schema: dict[str, Any] = {"$ref": REF.format(name=lists[op.list_of])}
    elif op.response is not None:
        schema = refs[op.response]
    else:
        schema = {"type": "object"}
    responses: dict[str, Any] = {
        "200": {"description": "OK", "headers": headers, "content": {"application/json": {"schema": schema}}}
    }
    if op.links:
        responses["200"]["links"] = copy.deepcopy(op.links)  # the document never aliases the table
    for status in _error_statuses(op):
        responses[status] = {"$ref": f"#/components/responses/{ERROR_RESPONSES[status][0]}"}
    document: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
    }
    if parameters:
        document["parameters"] = parameters
    if op.request is not None:
        document["requestBody"] = {
            # An empty body reads as {}: it is optional when every field has a default.
            "required": any(f.required for f in msgspec.structs.fields(op.request)),
            "content": {"application/json": {"schema": refs[op.request]}},
        }
    elif op.raw_body is not None:
        document["requestBody"] = {
            "required": True,
            "description": (
                f"The connector's signed notice, at most {op.raw_body} bytes; its fields and its "
                "signature header are the connector's (a bad signature is a 400 signature_invalid)."
            ),
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    document["responses"] = responses
    return document


def _list_schema(components: dict[str, Any], item: type) -> dict[str, Any]:
    """Stripe's list object (ListResponse) with ``data`` typed as a list of ``item``."""
    schema: dict[str, Any] = copy.deepcopy(components["ListResponse"])
    schema["title"] = f"{item.__name__}List"
    schema["properties"]["data"] = {"type": "array", "items": {"$ref": REF.format(name=item.__name__)}}
    return schema


# ---- rules the handlers and the input screen enforce beyond the Structs ---------------------------


def _component_refs(schema: Any) -> set[str]:
    if isinstance(schema, dict):
        found = {schema["$ref"].rsplit("/", 1)[1]} if isinstance(schema.get("$ref"), str) else set()
        return found.union(*(_component_refs(value) for value in schema.values()))
    if isinstance(schema, list):
        return set().union(*(_component_refs(value) for value in schema))
    return set()


def _request_components(components: dict[str, Any], roots: list[str]) -> list[str]:
    """The components request bodies use, directly or through other components."""
    seen: list[str] = []
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.append(name)
            pending += sorted(_component_refs(components[name]))
    return sorted(seen)


def _forbid_controls(schema: Any) -> None:
    """screen_body refuses a control character in any string of a body, keys included: say so on
    every string schema that does not already exclude them by its pattern, enum or const."""
    if isinstance(schema, list):
        for item in schema:
            _forbid_controls(item)
        return
    if not isinstance(schema, dict):
        return
    if schema.get("type") == "string" and not {"pattern", "enum", "const"} & schema.keys():
        schema["pattern"] = NO_CONTROLS
    names = schema.get("propertyNames")
    if isinstance(names, dict) and "pattern" not in names:
        names["pattern"] = NO_CONTROLS
    for key, value in schema.items():
        if key == "properties":
            for item in value.values():
                _forbid_controls(item)
        elif key not in ("examples", "default", "const", "enum"):
            _forbid_controls(value)


def _currencies(schema: dict[str, Any]) -> None:
    """ISO 4217 codes in circulation (gateway/domain/money.py), not any three letters."""
    properties = schema.get("properties", {})
    if "currency" in properties:
        properties["currency"] = {
            "enum": sorted(EXPONENTS),
            "description": "ISO 4217 code in circulation (lower case is accepted too).",
            "examples": ["CNY"],
        }


# Card data is a vaulted token or a number with its expiry, never both (services/payments.py).
_PRESENT: dict[str, Any] = {"not": {"type": "null"}}
_CARD_BY_NUMBER: dict[str, Any] = {
    "title": "card number",
    "required": ["number", "exp_month", "exp_year"],
    "properties": {
        # Present, not null: the card schema's own pattern and bounds apply through allOf.
        "number": _PRESENT,
        "exp_month": _PRESENT,
        "exp_year": _PRESENT,
        "token": {"type": "null"},
    },
}
_CARD_BY_TOKEN: dict[str, Any] = {
    "title": "card token",
    "required": ["token"],
    "properties": {"token": _PRESENT, "number": {"type": "null"}},
}


def _method_blocks() -> list[str]:
    """payment_method.type values; each names the sub-object it needs (services/inputs.py method_block)."""
    types = list(get_args(schemas.MethodType))
    fields = [f.name for f in msgspec.structs.fields(schemas.PaymentMethodInput) if f.name != "type"]
    if sorted(types) != sorted(fields):  # the rule below is "type t needs field t"
        raise RuntimeError(f"payment_method types {types} are not its sub-objects {fields}")
    return types


def _payment_methods(components: dict[str, Any]) -> None:
    method = components["PaymentMethodInput"]
    block_refs = {
        name: prop["anyOf"][0]["$ref"]
        for name, prop in method["properties"].items()
        if name != "type"  # each block is "$ref or null" until its type selects it
    }
    branches = []
    for kind in _method_blocks():
        block: dict[str, Any] = {"$ref": block_refs[kind]}
        if kind == "card":
            block = {"allOf": [block], "oneOf": [_CARD_BY_NUMBER, _CARD_BY_TOKEN]}
        branches.append(
            {
                "title": kind,
                "properties": {"type": {"const": kind}, kind: block},
                "required": ["type", kind],
            }
        )
    method["oneOf"] = branches
    method["description"] = (
        "`type` names the sub-object that must be present: card → `card` (a `token`, or `number`, "
        "`exp_month` and `exp_year`), bank_transfer → `bank_transfer`, wallet → `wallet`, "
        "balance → `balance`, prepaid → `prepaid`. Other sub-objects are ignored."
    )
    topup = components["CreateTopupRequest"]["properties"]
    topup["payment_method"] = {
        "allOf": [topup["payment_method"]],
        "properties": {"type": {"enum": list(TOPUP_METHODS)}},
        "description": "A top-up is funded by a card or a bank transfer.",
    }
    # services/payments.py _check_bill: the biller is paid with collected money, so no manual capture.
    components["CreatePaymentRequest"]["anyOf"] = [
        {"title": "no bill", "properties": {"bill": {"type": "null"}}},
        {"title": "captured automatically", "properties": {"capture_method": {"const": "automatic"}}},
    ]
    # gateway/services/holds.py confirm: exactly one answer, of the kind the challenge asked for.
    components["ConfirmPaymentRequest"]["oneOf"] = [
        {
            "title": "otp",
            "required": ["otp"],
            "properties": {"otp": _PRESENT, "device_signature": {"type": "null"}},
        },
        {
            "title": "device signature",
            "required": ["device_signature"],
            "properties": {"device_signature": _PRESENT, "otp": {"type": "null"}},
        },
    ]
    token = components["CreateTokenRequest"]["properties"]
    token["card"] = {"allOf": [token["card"], _CARD_BY_NUMBER], "description": "A card number (not a token)."}


def _request_rules(components: dict[str, Any], request_roots: list[str]) -> None:
    for name in _request_components(components, request_roots):
        _forbid_controls(components[name])
        _currencies(components[name])
    _payment_methods(components)


def build_document(version: str, operations: tuple[Operation, ...] = OPERATIONS) -> dict[str, Any]:
    structs: list[type] = [schemas.ErrorResponse, schemas.ListResponse]
    for op in operations:
        for struct in (op.request, op.response, op.list_of):
            if struct is not None and struct not in structs:
                structs.append(struct)
    ref_list, components = msgspec.json.schema_components(
        structs, ref_template=REF, schema_hook=schemas.schema_hook
    )
    refs = dict(zip(structs, ref_list, strict=True))
    _request_rules(components, [op.request.__name__ for op in operations if op.request is not None])
    lists: dict[type, str] = {}
    for op in operations:
        if op.list_of is not None and op.list_of not in lists:
            lists[op.list_of] = f"{op.list_of.__name__}List"
            components[lists[op.list_of]] = _list_schema(components, op.list_of)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs, lists)
    error_headers = {"Request-Id": _REQUEST_ID}
    responses = {
        name: {
            "description": description,
            "headers": error_headers | {"Retry-After": _RETRY_AFTER}
            if status in ("429", "503")
            else error_headers,
            **_ERROR,
        }
        for status, (name, description) in ERROR_RESPONSES.items()
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "payhub API",
            "version": version,
            "description": (
                "Unified payment gateway API. Every request is authenticated by a mutual-TLS client "
                "certificate; every object is scoped to the certificate's tenant. Amounts are integers "
                "in minor units; lists are newest first; errors share one shape."
            ),
        },
        "security": [{"mutualTLS": []}],
        "tags": [{"name": name} for name in dict.fromkeys(op.tag for op in operations)],
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": responses,
            "parameters": {
                "Idempotency-Key": {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": True,
                    "description": (
                        "Makes a money-moving request safe to retry: the same key and body replay the "
                        "first response; kept at least 24 hours, scoped to the tenant."
                    ),
                    # services/idempotent.py require_key: printable, not only blanks.
                    "schema": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_KEY_LENGTH,
                        "pattern": "^[ -~]*[!-~][ -~]*$",
                        "examples": ["order-17-attempt-1"],
                    },
                }
            },
            "headers": {
                "Request-Id": {
                    "description": "Identifies the request in logs and support questions.",
                    "schema": {"type": "string"},
                },
                "Idempotent-Replayed": {
                    "description": "`true` when the body is the stored response to an earlier request.",
                    "schema": {"const": "true"},
                },
                "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}},
            },
            "securitySchemes": {
                "mutualTLS": {
                    "type": "mutualTLS",
                    "description": (
                        "A client certificate from the payhub CA whose SAN URI is "
                        "spiffe://payhub.local/tenant/<tenant>/role/<client|operator>."
                    ),
                }
            },
        },
    }


def setup(app: web.Application) -> None:
    body = orjson.dumps(build_document(VERSION))  # once, at start-up; every request gets these bytes

    async def get_openapi(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    add(app, "GET", PATH, get_openapi, roles=CLIENT_OR_OPERATOR)
