"""``POST /v1/tokens``: vault a card (card on file) and answer a ``tok_…`` with display data only."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.routes import CLIENT, add
from gateway.audit import record as audit
from gateway.keys import DB_POOL, KEYRING
from gateway.middlewares import require_identity
from gateway.store.vault import vault_card
from gateway.views import schemas
from gateway.views.render import timestamp


async def create_token(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await read_json(request, schemas.CreateTokenRequest)
    card = body.card
    if card.token is not None:
        raise errors.InvalidRequest("card.token cannot be tokenized again.", param="card.token")
    if card.number is None or card.exp_month is None or card.exp_year is None:
        missing = next(name for name in ("number", "exp_month", "exp_year") if getattr(card, name) is None)
        raise errors.InvalidRequest(
            f"card.{missing} is required.", code="parameter_missing", param=f"card.{missing}"
        )
    # card.cvc, if sent, is checked for shape by the schema and then dropped: a CVC is never stored.
    pool = request.app[DB_POOL]
    async with pool.acquire() as conn:
        keyring = await request.app[KEYRING].current(conn)
        async with conn.transaction():
            try:
                stored = await vault_card(
                    conn,
                    keyring,
                    tenant=identity.tenant,
                    pan=card.number,
                    exp_month=card.exp_month,
                    exp_year=card.exp_year,
                )
            except ValueError as exc:
                raise errors.InvalidRequest(str(exc), code="invalid_card", param="card") from exc
            await audit(
                conn,
                actor=identity.spiffe_id,
                action="card.tokenize",
                outcome="success",
                tenant=identity.tenant,
                source=request.remote,
                object_id=stored.token_id,
                details={"brand": stored.display.brand, "last4": stored.display.last4},
            )
    d = stored.display
    token = schemas.Token(
        id=stored.token_id,
        type="card",
        card=schemas.CardDisplayOut(d.brand, d.bin, d.last4, d.exp_month, d.exp_year),
        created=timestamp(stored.created),
    )
    return json_response(token)


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/tokens", create_token, roles=CLIENT)
