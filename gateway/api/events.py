"""``/v1/events``: the event log webhooks carry, newest first, tenant-scoped."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway import errors
from gateway.api.common import json_response
from gateway.api.lists import page_params, refuse_unknown_cursor, render_list
from gateway.api.routes import CLIENT, add
from gateway.keys import DB_POOL
from gateway.middlewares import require_identity
from gateway.store import events as store
from gateway.views import events as views
from gateway.views import schemas

# Longer values cannot match anything stored; refusing them keeps junk out of the query.
MAX_TYPE_LENGTH = 100
MAX_OBJECT_ID_LENGTH = 64


def render_event(row: Any) -> schemas.Event:
    """``data.object`` is the object as it was when the event happened (Stripe's shape); webhooks
    carry the same rendering (gateway/views/events.py)."""
    return views.event(event_id=row["id"], event_type=row["type"], data=row["data"], created=row["created"])


def _text(request: web.Request, name: str, max_length: int) -> str | None:
    value = request.query.get(name)
    if value is not None and not 0 < len(value) <= max_length:
        raise errors.InvalidRequest(f"{name} must be 1 to {max_length} characters.", param=name)
    return value


async def get_event(request: web.Request) -> web.Response:
    identity = require_identity(request)
    event_id = request.match_info["id"]
    async with request.app[DB_POOL].acquire() as conn:
        row = await store.get_event(conn, tenant=identity.tenant, event_id=event_id)
    if row is None:
        raise errors.NotFound(f"No such event: '{event_id}'.", param="id")
    return json_response(render_event(row))


async def list_events(request: web.Request) -> web.Response:
    identity = require_identity(request)
    page = page_params(request)
    filters = store.EventFilters(
        type=_text(request, "type", MAX_TYPE_LENGTH),
        object_id=_text(request, "object", MAX_OBJECT_ID_LENGTH),
    )
    async with request.app[DB_POOL].acquire() as conn:
        rows, has_more = await store.list_events(
            conn,
            tenant=identity.tenant,
            filters=filters,
            limit=page.limit,
            starting_after=page.starting_after,
            ending_before=page.ending_before,
        )
        await refuse_unknown_cursor(conn, page, rows, table="events", tenant=identity.tenant, what="event")
    return render_list([render_event(row) for row in rows], has_more, "/v1/events")


def setup(app: web.Application) -> None:
    add(app, "GET", "/v1/events", list_events, roles=CLIENT)
    add(app, "GET", "/v1/events/{id}", get_event, roles=CLIENT)
