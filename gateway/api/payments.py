"""``/v1/payments``: create, read, history. Handlers parse, call the service, render."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.lists import page_params, refuse_unknown_cursor, render_list
from gateway.api.routes import CLIENT, add
from gateway.keys import DB_POOL, HOLDS, PAYMENTS
from gateway.middlewares import require_identity
from gateway.services.holds import Holds
from gateway.services.idempotent import KeyedRequest, Outcome, require_key
from gateway.store import payments as store
from gateway.traffic import check_customer_limit
from gateway.views import render, schemas

STATUSES = frozenset(
    {"requires_action", "processing", "requires_capture", "under_review", "succeeded", "failed", "canceled"}
)
METHODS = frozenset({"card", "bank_transfer", "wallet", "balance", "prepaid"})
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9999, 1, 1, tzinfo=UTC)


async def keyed_request(request: web.Request, tenant: str) -> KeyedRequest:
    key = require_key(request.headers.get("Idempotency-Key"))
    return KeyedRequest(tenant, key, request.method, request.path, await request.read())


def outcome_response(outcome: Outcome) -> web.Response:
    response = web.Response(status=outcome.status, body=outcome.body, content_type="application/json")
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def create_payment(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CreatePaymentRequest)
    keyed = await keyed_request(request, identity.tenant)
    customer = params.customer
    await check_customer_limit(
        request, customer.id if customer else None, ip=customer.ip if customer else None
    )
    outcome = await request.app[PAYMENTS].create(identity, params, keyed, request.remote)
    return outcome_response(outcome)


async def capture_payment(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CapturePaymentRequest)
    keyed = await keyed_request(request, identity.tenant)
    service = request.app[PAYMENTS]
    outcome = await service.capture(
        identity, request.match_info["id"], params.amount_to_capture, keyed, request.remote
    )
    return outcome_response(outcome)


def holds_of(request: web.Request) -> Holds:
    """Held payments' service; with risk screening off there is none (409, never a 500)."""
    holds = request.app.get(HOLDS)
    if holds is None:
        raise errors.Conflict("Risk screening is off: no payment is held for a step-up or a review.")
    return holds


async def confirm_payment(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.ConfirmPaymentRequest)
    keyed = await keyed_request(request, identity.tenant)
    outcome = await holds_of(request).confirm(
        identity, request.match_info["id"], params, keyed, request.remote
    )
    return outcome_response(outcome)


async def cancel_payment(request: web.Request) -> web.Response:
    identity = require_identity(request)
    await read_json(request, schemas.CancelPaymentRequest)
    keyed = await keyed_request(request, identity.tenant)
    outcome = await request.app[PAYMENTS].cancel(identity, request.match_info["id"], keyed, request.remote)
    return outcome_response(outcome)


async def get_payment(request: web.Request) -> web.Response:
    identity = require_identity(request)
    payment_id = request.match_info["id"]
    async with request.app[DB_POOL].acquire() as conn:
        row = await store.get_payment(conn, tenant=identity.tenant, payment_id=payment_id)
    if row is None:
        raise errors.NotFound(f"No such payment: '{payment_id}'.", param="id")
    return json_response(render.payment(row))


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,12}", raw):
        raise errors.InvalidRequest(f"{name} must be a non-negative integer.", param=name)
    return int(raw)


def _time(request: web.Request, name: str) -> datetime | None:
    """RFC 3339 with a zone, or Unix seconds (as Stripe accepts), as an aware UTC datetime."""
    raw = request.query.get(name)
    if raw is None:
        return None
    refused = errors.InvalidRequest(
        f"{name} must be an RFC 3339 timestamp with a zone (e.g. 2026-06-01T00:00:00Z) or Unix seconds.",
        param=name,
    )
    try:
        if re.fullmatch(r"[0-9]{1,11}", raw):
            value = datetime.fromtimestamp(int(raw), tz=UTC)
        else:
            value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if value.tzinfo is None:
                raise refused
            value = value.astimezone(UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise refused from exc
    if not MIN_TIME <= value <= MAX_TIME:  # PostgreSQL's range is narrower than Python's near the ends
        raise refused
    return value


def _choice(request: web.Request, name: str, allowed: frozenset[str]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise errors.InvalidRequest(f"{name} must be one of: {', '.join(sorted(allowed))}.", param=name)
    return value


async def list_payments(request: web.Request) -> web.Response:
    identity = require_identity(request)
    page = page_params(request)
    filters = store.PaymentFilters(
        status=_choice(request, "status", STATUSES),
        method=_choice(request, "method", METHODS),
        customer=request.query.get("customer"),
        biller=request.query.get("biller"),
        created_gte=_time(request, "created_gte"),
        created_lte=_time(request, "created_lte"),
        amount_gte=_int(request, "amount_gte"),
        amount_lte=_int(request, "amount_lte"),
    )
    async with request.app[DB_POOL].acquire() as conn:
        rows, has_more = await store.list_payments(
            conn,
            tenant=identity.tenant,
            filters=filters,
            limit=page.limit,
            starting_after=page.starting_after,
            ending_before=page.ending_before,
        )
        await refuse_unknown_cursor(
            conn, page, rows, table="payments", tenant=identity.tenant, what="payment"
        )
    return render_list([render.payment(row) for row in rows], has_more, "/v1/payments")


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/payments", create_payment, roles=CLIENT)
    add(app, "GET", "/v1/payments", list_payments, roles=CLIENT)
    add(app, "GET", "/v1/payments/{id}", get_payment, roles=CLIENT)
    add(app, "POST", "/v1/payments/{id}/confirm", confirm_payment, roles=CLIENT)
    add(app, "POST", "/v1/payments/{id}/capture", capture_payment, roles=CLIENT)
    add(app, "POST", "/v1/payments/{id}/cancel", cancel_payment, roles=CLIENT)
