"""``/v1/fx``: mid-market rates with their ``as_of``, and quotes that lock a rate (docs/fx.md)."""

from __future__ import annotations

import re

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.routes import CLIENT, add
from gateway.keys import FX
from gateway.middlewares import require_identity
from gateway.store.fx import Quote
from gateway.views import schemas
from gateway.views.render import timestamp

_CURRENCY = re.compile(r"[A-Za-z]{3}")


def render_quote(quote: Quote) -> schemas.FxQuote:
    return schemas.FxQuote(
        id=quote.id,
        from_currency=quote.from_currency,
        to_currency=quote.to_currency,
        from_amount=quote.from_amount,
        to_amount=quote.to_amount,
        fee=quote.fee,
        rate=str(quote.rate),
        mid_rate=str(quote.mid_rate),
        spread=str(quote.spread),
        rates_as_of=timestamp(quote.rates_as_of),
        expires_at=timestamp(quote.expires_at),
        used=quote.used_key is not None,
        created=timestamp(quote.created),
    )


async def get_rates(request: web.Request) -> web.Response:
    require_identity(request)
    base = request.query.get("base", "USD")
    if not _CURRENCY.fullmatch(base):
        raise errors.InvalidRequest("base must be an ISO 4217 currency code such as USD.", param="base")
    view = request.app[FX].rates(base)
    return json_response(
        schemas.FxRates(
            base=view.base,
            rates={currency: str(rate) for currency, rate in view.rates.items()},
            as_of=timestamp(view.as_of),
        )
    )


async def create_quote(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CreateFxQuoteRequest)
    if (params.to_amount is None) == (params.from_amount is None):
        raise errors.InvalidRequest("Give exactly one of to_amount and from_amount.", param="to_amount")
    quote = await request.app[FX].quote(
        identity.tenant,
        from_currency=params.from_currency,
        to_currency=params.to_currency,
        to_amount=params.to_amount,
        from_amount=params.from_amount,
    )
    return json_response(render_quote(quote))


async def get_quote(request: web.Request) -> web.Response:
    identity = require_identity(request)
    return json_response(render_quote(await request.app[FX].get(identity.tenant, request.match_info["id"])))


def setup(app: web.Application) -> None:
    add(app, "GET", "/v1/fx/rates", get_rates, roles=CLIENT)
    add(app, "POST", "/v1/fx/quotes", create_quote, roles=CLIENT)
    add(app, "GET", "/v1/fx/quotes/{id}", get_quote, roles=CLIENT)
