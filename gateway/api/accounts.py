"""``/v1/accounts``: stored balances, their ledger statement, and top-ups."""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.lists import entry_number, page_params, render_list, unknown_cursor
from gateway.api.payments import keyed_request, outcome_response
from gateway.api.routes import CLIENT, add
from gateway.keys import DB_POOL, PAYMENTS
from gateway.middlewares import require_identity
from gateway.services.inputs import metadata_text, money, refuse_card_numbers
from gateway.store import ledger
from gateway.views import schemas
from gateway.views.render import timestamp


def render_account(account: ledger.Account) -> schemas.Account:
    return schemas.Account(
        id=account.id,
        currency=account.currency,
        customer=account.customer_id,
        balance=schemas.Balance(available=account.available, pending=account.pending),
        metadata=orjson.loads(account.metadata),
        created=timestamp(account.created),
    )


def render_entry(entry: ledger.Entry) -> schemas.LedgerEntry:
    return schemas.LedgerEntry(
        id=f"le_{entry.id}",
        transaction=entry.transaction_id,
        type=entry.kind,
        amount=entry.amount,
        currency=entry.currency,
        bucket="pending" if entry.bucket == "pending" else "available",
        payment=entry.payment_id,
        refund=entry.refund_id,
        created=timestamp(entry.created),
    )


async def create_account(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CreateAccountRequest)
    _, currency = money(1, params.currency)
    refuse_card_numbers({"customer": params.customer} | metadata_text(params.metadata))
    async with request.app[DB_POOL].acquire() as conn:
        account = await ledger.create_customer_account(
            conn,
            tenant=identity.tenant,
            currency=currency,
            customer_id=params.customer,
            metadata=orjson.dumps(params.metadata).decode(),
        )
    return json_response(render_account(account))


async def _account(request: web.Request) -> ledger.Account:
    identity = require_identity(request)
    account_id = request.match_info["id"]
    async with request.app[DB_POOL].acquire() as conn:
        account = await ledger.get_customer_account(conn, tenant=identity.tenant, account_id=account_id)
    if account is None:
        raise errors.NotFound(f"No such account: '{account_id}'.", param="id")
    return account


async def get_account(request: web.Request) -> web.Response:
    return json_response(render_account(await _account(request)))


async def list_entries(request: web.Request) -> web.Response:
    account = await _account(request)
    page = page_params(request)
    number = None
    async with request.app[DB_POOL].acquire() as conn:
        if page.cursor is not None:
            number = entry_number(page.cursor)
            if not await ledger.entry_exists(conn, account_id=account.id, entry_id=number):
                raise unknown_cursor("ledger entry", page.cursor)
        entries = await ledger.list_entries(
            conn,
            account_id=account.id,
            limit=page.limit + 1,
            before_id=number if page.starting_after else None,
            after_id=number if page.ending_before else None,
        )
    has_more = len(entries) > page.limit
    # Both queries return newest first; the surplus row is the one furthest from the cursor.
    entries = entries[-page.limit :] if page.ending_before else entries[: page.limit]
    return render_list([render_entry(e) for e in entries], has_more, f"/v1/accounts/{account.id}/entries")


async def create_topup(request: web.Request) -> web.Response:
    identity = require_identity(request)
    params = await read_json(request, schemas.CreateTopupRequest)
    keyed = await keyed_request(request, identity.tenant)
    outcome = await request.app[PAYMENTS].topup(
        identity, request.match_info["id"], params, keyed, request.remote
    )
    return outcome_response(outcome)


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/accounts", create_account, roles=CLIENT)
    add(app, "GET", "/v1/accounts/{id}", get_account, roles=CLIENT)
    add(app, "GET", "/v1/accounts/{id}/entries", list_entries, roles=CLIENT)
    add(app, "POST", "/v1/accounts/{id}/topups", create_topup, roles=CLIENT)
