"""``/v1/billers`` (the catalog) and ``/v1/bills/fetch`` (a customer's open bills). Thin: parse,
call :class:`gateway.services.billers.BillerCatalog`, render."""

from __future__ import annotations

import re

from aiohttp import web

from connectors.base import Bill, BillerInfo
from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.lists import page_params, render_list
from gateway.api.routes import CLIENT, CLIENT_OR_OPERATOR, add
from gateway.keys import BILLERS
from gateway.middlewares import require_identity
from gateway.services.billers import CATEGORIES
from gateway.views import schemas


def render_biller(info: BillerInfo) -> schemas.Biller:
    return schemas.Biller(
        id=info.id,
        name=info.name,
        category=info.category,
        country=info.country,
        currency=info.currency,
        customer_params=[
            schemas.CustomerParamSpec(name=p.name, regex=p.regex, description=p.description)
            for p in info.customer_params
        ],
        fetch=info.fetch,
        amount_exactness=info.amount_exactness,
        denominations=list(info.denominations),
    )


def render_bill(biller: str, bill: Bill) -> schemas.Bill:
    return schemas.Bill(
        bill_ref=bill.bill_ref,
        biller=biller,
        amount_due=bill.amount_due,
        currency=bill.currency,
        due_date=bill.due_date.isoformat(),
        customer_name=bill.customer_name,
    )


def _filters(request: web.Request) -> tuple[str | None, str | None]:
    category = request.query.get("category") or None
    if category is not None and category not in CATEGORIES:
        raise errors.InvalidRequest(f"category must be one of: {', '.join(CATEGORIES)}.", param="category")
    country = request.query.get("country") or None
    if country is not None and not re.fullmatch(r"[A-Z]{2}", country):
        raise errors.InvalidRequest("country must be an ISO 3166-1 alpha-2 code, e.g. CN.", param="country")
    return category, country


async def list_billers(request: web.Request) -> web.Response:
    """Ordered by id (billers have no creation time); ``starting_after``/``ending_before`` are ids."""
    require_identity(request)
    page = page_params(request)
    category, country = _filters(request)
    billers = request.app[BILLERS].list(category=category, country=country)
    ids = [info.id for info in billers]
    cursor = page.starting_after or page.ending_before
    if cursor is not None and cursor not in ids:
        param = "starting_after" if page.starting_after else "ending_before"
        raise errors.NotFound(f"No such biller: '{cursor}'.", param=param)
    if page.starting_after is not None:
        rest = billers[ids.index(page.starting_after) + 1 :]
        chosen, has_more = rest[: page.limit], len(rest) > page.limit
    elif page.ending_before is not None:
        before = billers[: ids.index(page.ending_before)]
        chosen, has_more = before[-page.limit :], len(before) > page.limit
    else:
        chosen, has_more = billers[: page.limit], len(billers) > page.limit
    return render_list([render_biller(info) for info in chosen], has_more, "/v1/billers")


async def get_biller(request: web.Request) -> web.Response:
    require_identity(request)
    info = request.app[BILLERS].get(request.match_info["id"], param="id")
    return json_response(render_biller(info))


async def fetch_bills(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await read_json(request, schemas.FetchBillsRequest)
    bills = await request.app[BILLERS].fetch(identity.tenant, body.biller, body.customer_params)
    return render_list([render_bill(body.biller, bill) for bill in bills], False, "/v1/bills/fetch")


def setup(app: web.Application) -> None:
    # The catalog holds no customer data and operators read it in reviews; a bill fetch does.
    add(app, "GET", "/v1/billers", list_billers, roles=CLIENT_OR_OPERATOR)
    add(app, "GET", "/v1/billers/{id}", get_biller, roles=CLIENT_OR_OPERATOR)
    add(app, "POST", "/v1/bills/fetch", fetch_bills, roles=CLIENT)
