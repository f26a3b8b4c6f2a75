"""``/v1/refunds``: full or partial refunds, never more than captured."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.lists import page_params, refuse_unknown_cursor, render_list
from gateway.api.payments import keyed_request, outcome_response
from gateway.api.routes import CLIENT, add
from gateway.keys import DB_POOL, REFUNDS
from gateway.middlewares import require_identity
from gateway.store import payments as store
from gateway.views import render, schemas

MAX_PAYMENT_ID_LENGTH = 64  # longer values cannot match a payment id


async def create_refund(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CreateRefundRequest)
    keyed = await keyed_request(request, identity.tenant)
    outcome = await request.app[REFUNDS].create(identity, params, keyed, request.remote)
    return outcome_response(outcome)


async def get_refund(request: web.Request) -> web.Response:
    identity = require_identity(request)
    refund_id = request.match_info["id"]
    async with request.app[DB_POOL].acquire() as conn:
        row = await store.get_refund(conn, tenant=identity.tenant, refund_id=refund_id)
    if row is None:
        raise errors.NotFound(f"No such refund: '{refund_id}'.", param="id")
    return json_response(render.refund(row))


async def list_refunds(request: web.Request) -> web.Response:
    identity = require_identity(request)
    page = page_params(request)
    payment = request.query.get("payment")
    if payment is not None and not 0 < len(payment) <= MAX_PAYMENT_ID_LENGTH:
        raise errors.InvalidRequest(
            f"payment must be 1 to {MAX_PAYMENT_ID_LENGTH} characters.", param="payment"
        )
    async with request.app[DB_POOL].acquire() as conn:
        rows, has_more = await store.list_refunds(
            conn,
            tenant=identity.tenant,
            payment_id=payment,
            limit=page.limit,
            starting_after=page.starting_after,
            ending_before=page.ending_before,
        )
        await refuse_unknown_cursor(conn, page, rows, table="refunds", tenant=identity.tenant, what="refund")
    return render_list([render.refund(row) for row in rows], has_more, "/v1/refunds")


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/refunds", create_refund, roles=CLIENT)
    add(app, "GET", "/v1/refunds", list_refunds, roles=CLIENT)
    add(app, "GET", "/v1/refunds/{id}", get_refund, roles=CLIENT)
