"""``/v1/customers/{id}/preferences``: a customer's locale, time zone, notification channels, quiet
hours and display settings. Thin: parse, call :class:`gateway.services.preferences.PreferencesService`,
render. GET of a customer who never saved any answers the defaults (``updated: null``)."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from gateway.api.common import json_response, read_json
from gateway.api.routes import CLIENT, add
from gateway.domain.notifications import Preferences
from gateway.keys import PREFERENCES
from gateway.middlewares import require_identity
from gateway.views import schemas
from gateway.views.render import timestamp


def render_preferences(
    customer_id: str, prefs: Preferences, updated: datetime | None
) -> schemas.CustomerPreferences:
    quiet = prefs.quiet_hours
    return schemas.CustomerPreferences(
        customer=customer_id,
        locale=prefs.locale,
        timezone=prefs.timezone,
        default_currency=prefs.default_currency,
        channels=["webhook", *prefs.channels],  # webhooks always carry every event
        email=prefs.email,
        phone=prefs.phone,
        quiet_hours=schemas.QuietHours(**quiet.render()) if quiet is not None else None,
        reminder_lead_days=prefs.reminder_lead_days,
        theme=prefs.theme,
        font_scale=prefs.font_scale,
        updated=timestamp(updated) if updated is not None else None,
    )


async def get_preferences(request: web.Request) -> web.Response:
    identity = require_identity(request)
    customer_id = request.match_info["id"]
    service = request.app[PREFERENCES]
    stored = await service.get(identity.tenant, customer_id)
    if stored is None:
        return json_response(render_preferences(customer_id, service.defaults(), None))
    return json_response(render_preferences(customer_id, stored.preferences, stored.updated))


async def put_preferences(request: web.Request) -> web.Response:
    identity = require_identity(request)
    customer_id = request.match_info["id"]
    body = await read_json(request, schemas.PreferencesInput)
    stored = await request.app[PREFERENCES].put(identity.tenant, customer_id, body)
    return json_response(render_preferences(customer_id, stored.preferences, stored.updated))


def setup(app: web.Application) -> None:
    add(app, "GET", "/v1/customers/{id}/preferences", get_preferences, roles=CLIENT)
    add(app, "PUT", "/v1/customers/{id}/preferences", put_preferences, roles=CLIENT)
