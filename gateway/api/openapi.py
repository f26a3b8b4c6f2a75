"""``GET /v1/openapi.json``: the OpenAPI 3.1 document, generated from the handlers' own Structs.

The document is built once, when the app is set up, from :data:`OPERATIONS` (a declarative table
of the routes) and the msgspec Structs the handlers decode and encode with, so the contract and
the code cannot drift apart. A test compares the table with the app's router both ways.
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
from gateway.api.callbacks import CallbackReceipt
from gateway.api.events import MAX_OBJECT_ID_LENGTH, MAX_TYPE_LENGTH
from gateway.api.lists import DEFAULT_LIMIT, MAX_LIMIT
from gateway.api.payments import METHODS, STATUSES
from gateway.api.ping import PingRequest, PingResponse
from gateway.api.routes import CLIENT_OR_OPERATOR, add
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


def _timestamp_param(name: str, bound: str) -> Param:
    return Param(
        name,
        {"type": "string", "examples": ["2025-06-01T00:00:00Z", "1748736000"]},
        f"Only objects created at or {bound} this time: RFC 3339 with a time zone, or Unix seconds.",
    )


LIST_PARAMS = (
    Param(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
        "How many objects to return.",
    ),
    Param(
        "starting_after",
        {"type": "string"},
        "Cursor: an object id; the page holds the objects listed after it (older ones).",
    ),
    Param(
        "ending_before",
        {"type": "string"},
        "Cursor: an object id; the page holds the objects listed before it (newer ones). "
        "Not together with starting_after.",
    ),
)

PAYMENT_FILTERS = (
    Param("status", {"enum": sorted(STATUSES)}, "Only payments with this status."),
    Param("method", {"enum": sorted(METHODS)}, "Only payments with this payment method type."),
    Param("customer", {"type": "string"}, "Only payments of this customer id."),
    Param("biller", {"type": "string"}, "Only bill payments to this biller id."),
    _timestamp_param("created_gte", "after"),
    _timestamp_param("created_lte", "before"),
    Param("amount_gte", {"type": "integer", "minimum": 0}, "Only payments of at least this amount."),
    Param("amount_lte", {"type": "integer", "minimum": 0}, "Only payments of at most this amount."),
)

EVENT_FILTERS = (
    Param(
        "type",
        {"type": "string", "maxLength": MAX_TYPE_LENGTH, "examples": ["payment.succeeded"]},
        "Only events of this type.",
    ),
    Param(
        "object",
        {"type": "string", "maxLength": MAX_OBJECT_ID_LENGTH},
        "Only events about this object id (a payment, a refund …).",
    ),
)

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
        "/v1/refunds",
        "createRefund",
        "Refund a payment (full or partial, never more than captured)",
        "refunds",
        schemas.Refund,
        request=schemas.CreateRefundRequest,
        moves_money=True,
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
    ),
    Operation(
        "POST",
        "/v1/tokens",
        "createToken",
        "Vault a card (card on file)",
        "tokens",
        schemas.Token,
        request=schemas.CreateTokenRequest,
    ),
    Operation(
        "GET",
        "/v1/events",
        "listEvents",
        "Event log, newest first",
        "events",
        None,
        list_of=schemas.Event,
        query=LIST_PARAMS + EVENT_FILTERS,
    ),
    Operation("GET", "/v1/events/{id}", "getEvent", "Read an event", "events", schemas.Event),
    Operation(
        "POST",
        "/v1/connectors/{name}/callbacks",
        "postConnectorCallback",
        "A bank's, wallet's or biller's signed notice (authenticated by the connector's signature)",
        "connectors",
        CallbackReceipt,
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
    ),
    Operation(
        "GET",
        "/v1/billers/{id}",
        "getBiller",
        "Read a biller: its customer params, fetch and amount rules",
        "billers",
        schemas.Biller,
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
        "The client certificate's identity is not accepted, or its role may not use the route.",
    ),
    "404": ("NotFound", "No such object for the caller's tenant (another tenant's objects answer 404 too)."),
    "409": (
        "Conflict",
        "The object's state does not allow this, or the same Idempotency-Key is still running.",
    ),
    "413": ("TooLarge", "The request body is too large."),
    "422": ("IdempotencyKeyReused", "The Idempotency-Key was used before with a different request."),
    "429": ("RateLimited", "Too many requests: retry after Retry-After seconds."),
    "500": ("InternalError", "Internal error: it never carries a payment decision."),
    "503": ("Unavailable", "Overloaded or a dependency is down: retry after Retry-After seconds."),
}


def _error_statuses(op: Operation) -> list[str]:
    statuses = ["400", "403"]
    if "{" in op.path or op.list_of is not None or op.moves_money:
        statuses.append("404")  # an id in the path, a list cursor, or an id in the body
    if op.moves_money:
        statuses += ["409", "422"]
    if op.request is not None:
        statuses.append("413")
    return [*statuses, "429", "500", "503"]


def _operation(op: Operation, refs: dict[type, dict[str, Any]], lists: dict[type, str]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"\{(\w+)\}", op.path)
    ]
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
    document["responses"] = responses
    return document


def _list_schema(components: dict[str, Any], item: type) -> dict[str, Any]:
    """Stripe's list object (ListResponse) with ``data`` typed as a list of ``item``."""
    schema: dict[str, Any] = copy.deepcopy(components["ListResponse"])
    schema["title"] = f"{item.__name__}List"
    schema["properties"]["data"] = {"type": "array", "items": {"$ref": REF.format(name=item.__name__)}}
    return schema


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
                    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
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
