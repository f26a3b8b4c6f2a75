"""``/v1/reminders``: bill due-date reminders and low-balance alerts, tenant-scoped. Thin: parse,
call :class:`gateway.services.reminders.ReminderService`, render."""

from __future__ import annotations

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response, read_json
from gateway.api.lists import page_params, render_list
from gateway.api.routes import CLIENT, add
from gateway.keys import REMINDERS
from gateway.middlewares import require_identity
from gateway.services.preferences import MAX_CUSTOMER_ID
from gateway.store.reminders import Reminder
from gateway.views import schemas
from gateway.views.render import timestamp


def render_reminder(reminder: Reminder) -> schemas.Reminder:
    return schemas.Reminder(
        id=reminder.id,
        type="bill_due" if reminder.type == "bill_due" else "low_balance",
        customer=reminder.customer_id,
        biller=reminder.biller,
        customer_params=reminder.customer_params,
        lead_days=reminder.lead_days,
        next_run=timestamp(reminder.next_run) if reminder.next_run is not None else None,
        account=reminder.account_id,
        threshold=reminder.threshold,
        currency=reminder.currency,
        status="active" if reminder.status == "active" else "deleted",
        created=timestamp(reminder.created),
    )


async def create_reminder(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await read_json(request, schemas.CreateReminderRequest)
    reminder = await request.app[REMINDERS].create(identity.tenant, body)
    return json_response(render_reminder(reminder))


async def list_reminders(request: web.Request) -> web.Response:
    identity = require_identity(request)
    page = page_params(request)
    customer = request.query.get("customer")
    if customer is not None and not 0 < len(customer) <= MAX_CUSTOMER_ID:
        raise errors.InvalidRequest(f"customer must be 1 to {MAX_CUSTOMER_ID} characters.", param="customer")
    reminders, has_more = await request.app[REMINDERS].list(
        identity.tenant,
        customer_id=customer,
        limit=page.limit,
        starting_after=page.starting_after,
        ending_before=page.ending_before,
    )
    return render_list([render_reminder(r) for r in reminders], has_more, "/v1/reminders")


async def get_reminder(request: web.Request) -> web.Response:
    identity = require_identity(request)
    reminder = await request.app[REMINDERS].get(identity.tenant, request.match_info["id"])
    return json_response(render_reminder(reminder))


async def delete_reminder(request: web.Request) -> web.Response:
    identity = require_identity(request)
    reminder = await request.app[REMINDERS].delete(identity.tenant, request.match_info["id"])
    return json_response(render_reminder(reminder))


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/reminders", create_reminder, roles=CLIENT)
    add(app, "GET", "/v1/reminders", list_reminders, roles=CLIENT)
    add(app, "GET", "/v1/reminders/{id}", get_reminder, roles=CLIENT)
    add(app, "DELETE", "/v1/reminders/{id}", delete_reminder, roles=CLIENT)
