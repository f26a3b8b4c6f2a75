"""The manual queue for operators (docs/faults.md): list the attempts no policy could settle, and
record the processor's or biller's answer for one of them."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.api.common import read_json
from gateway.api.lists import page_params, render_list
from gateway.api.payments import outcome_response
from gateway.api.routes import OPERATOR, add
from gateway.keys import MANUAL_REVIEWS
from gateway.middlewares import require_identity
from gateway.views import render, schemas

PATH = "/v1/manual_reviews"


async def list_manual_reviews(request: web.Request) -> web.Response:
    require_identity(request)
    page = page_params(request)
    if page.ending_before is not None:
        raise errors.InvalidRequest("The manual queue pages forward only.", param="ending_before")
    rows = await request.app[MANUAL_REVIEWS].list(limit=page.limit + 1, starting_after=page.starting_after)
    return render_list([render.manual_review(r) for r in rows[: page.limit]], len(rows) > page.limit, PATH)


async def resolve_manual_review(request: web.Request) -> web.Response:
    operator = require_identity(request)
    params = await read_json(request, schemas.ResolveManualReviewRequest)
    outcome = await request.app[MANUAL_REVIEWS].resolve(
        operator,
        request.match_info["id"],
        succeeded=params.outcome == "succeeded",
        reference=params.reference,
        source=request.remote,
    )
    return outcome_response(outcome)


def setup(app: web.Application) -> None:
    add(app, "GET", PATH, list_manual_reviews, roles=OPERATOR)
    add(app, "POST", PATH + "/{id}/resolve", resolve_manual_review, roles=OPERATOR)
