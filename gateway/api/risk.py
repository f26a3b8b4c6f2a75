"""Risk routes: step-up devices (clients), the review queue and allow/deny lists (operators)."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.lists import page_params, render_list
from gateway.api.payments import holds_of, outcome_response
from gateway.api.routes import CLIENT, OPERATOR, add
from gateway.keys import DB_POOL
from gateway.middlewares import require_identity
from gateway.services import risk_admin
from gateway.store import payments as payments_store
from gateway.store import risk as store
from gateway.views import render, schemas

LISTS = frozenset({"allow", "deny"})


async def create_device(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CreateDeviceRequest)
    # 200 whether new or already registered with this key (Stripe answers a create with 200 too).
    device, _ = await risk_admin.register_device(request.app[DB_POOL], identity, params, request.remote)
    return json_response(render.device(device))


def _payment_id(review_id: str, param: str = "id") -> str:
    if not review_id.startswith("rev_"):
        raise errors.NotFound(f"No such review: '{review_id}'.", param=param)
    return "pay_" + review_id.removeprefix("rev_")


async def list_reviews(request: web.Request) -> web.Response:
    require_identity(request)
    page = page_params(request)
    after = None
    async with request.app[DB_POOL].acquire() as conn:
        if page.starting_after is not None:
            row = await payments_store.get_payment_any_tenant(
                conn, payment_id=_payment_id(page.starting_after, "starting_after")
            )
            if row is None or row.status != "under_review":
                raise errors.NotFound(f"No such review: '{page.starting_after}'.", param="starting_after")
            after = (row.created, row.id)
        elif page.ending_before is not None:
            raise errors.InvalidRequest("The review queue pages forward only.", param="ending_before")
        rows = await payments_store.under_review(conn, limit=page.limit + 1, starting_after=after)
    return render_list([render.review(r) for r in rows[: page.limit]], len(rows) > page.limit, "/v1/reviews")


async def approve_review(request: web.Request) -> web.Response:
    return await _decide(request, approve=True)


async def reject_review(request: web.Request) -> web.Response:
    return await _decide(request, approve=False)


async def _decide(request: web.Request, *, approve: bool) -> web.Response:
    operator = require_identity(request)
    await read_json(request, schemas.ReviewDecisionRequest)
    payment_id = _payment_id(request.match_info["id"])
    holds = holds_of(request)
    decide = holds.approve if approve else holds.reject
    return outcome_response(await decide(operator, payment_id, request.remote))


def _list_name(request: web.Request) -> str:
    name = request.match_info["list"]
    if name not in LISTS:
        raise errors.NotFound(f"No such list: '{name}'.", param="list")
    return name


async def get_list(request: web.Request) -> web.Response:
    require_identity(request)
    name = _list_name(request)
    page = page_params(request)
    if page.cursor is not None:
        raise errors.InvalidRequest("Lists return their newest entries; use limit.", param=page.cursor[0])
    async with request.app[DB_POOL].acquire() as conn:
        rows = await store.list_entries(conn, list_=name, limit=page.limit + 1)
    data = [render.list_entry(r) for r in rows[: page.limit]]
    return render_list(data, len(rows) > page.limit, f"/v1/admin/lists/{name}")


async def add_list_entry(request: web.Request) -> web.Response:
    operator = require_identity(request)
    name = _list_name(request)
    params = await read_json(request, schemas.ListEntryRequest)
    entry = await risk_admin.add_list_entry(request.app[DB_POOL], operator, name, params, request.remote)
    return json_response(render.list_entry(entry))


async def delete_list_entry(request: web.Request) -> web.Response:
    operator = require_identity(request)
    name = _list_name(request)
    entry = await risk_admin.delete_list_entry(
        request.app[DB_POOL], operator, name, request.match_info["id"], request.remote
    )
    return json_response(render.list_entry(entry))


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/devices", create_device, roles=CLIENT)
    add(app, "GET", "/v1/reviews", list_reviews, roles=OPERATOR)
    add(app, "POST", "/v1/reviews/{id}/approve", approve_review, roles=OPERATOR)
    add(app, "POST", "/v1/reviews/{id}/reject", reject_review, roles=OPERATOR)
    add(app, "GET", "/v1/admin/lists/{list}", get_list, roles=OPERATOR)
    add(app, "POST", "/v1/admin/lists/{list}", add_list_entry, roles=OPERATOR)
    add(app, "DELETE", "/v1/admin/lists/{list}/{id}", delete_list_entry, roles=OPERATOR)
