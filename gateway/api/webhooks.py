"""``/v1/webhook_endpoints`` and ``POST /v1/events/{id}/redeliver`` (docs/webhooks.md).

Thin handlers: parse, call gateway.services.webhooks, render. The signing secret appears only in
the answers to creation and rotation.
"""

from __future__ import annotations

from aiohttp import web

from gateway.api.common import json_response, read_json
from gateway.api.lists import page_params, render_list
from gateway.api.routes import CLIENT, add
from gateway.keys import WEBHOOKS
from gateway.middlewares import require_identity
from gateway.services.webhooks import EndpointWithSecret
from gateway.store.webhooks import Delivery, Endpoint
from gateway.views import schemas
from gateway.views.render import timestamp

LIST_URL = "/v1/webhook_endpoints"


def render_endpoint(endpoint: Endpoint) -> schemas.WebhookEndpoint:
    expires = endpoint.previous_expires
    return schemas.WebhookEndpoint(
        id=endpoint.id,
        url=endpoint.url,
        enabled_events=endpoint.enabled_events,
        description=endpoint.description,
        status="enabled",
        previous_secret_expires=timestamp(expires) if expires is not None else None,
        created=timestamp(endpoint.created),
    )


def _with_secret(shown: EndpointWithSecret) -> schemas.WebhookEndpointWithSecret:
    plain = render_endpoint(shown.endpoint)
    return schemas.WebhookEndpointWithSecret(
        id=plain.id,
        url=plain.url,
        enabled_events=plain.enabled_events,
        description=plain.description,
        status=plain.status,
        previous_secret_expires=plain.previous_secret_expires,
        created=plain.created,
        secret=shown.secret,
    )


def render_delivery(delivery: Delivery) -> schemas.WebhookDelivery:
    return schemas.WebhookDelivery(
        id=str(delivery.id),
        event=delivery.event_id,
        endpoint=delivery.endpoint_id,
        status=delivery.status,  # type: ignore[arg-type]  # the table's CHECK is the Literal
        attempts=delivery.attempts,
        next_attempt=timestamp(delivery.next_attempt),
        deadline=timestamp(delivery.deadline),
        last_status=delivery.last_status,
        last_error=delivery.last_error,
        delivered_at=timestamp(delivery.delivered_at) if delivery.delivered_at is not None else None,
        created=timestamp(delivery.created),
    )


async def create_endpoint(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await read_json(request, schemas.CreateWebhookEndpointRequest)
    created = await request.app[WEBHOOKS].create(
        identity,
        url=body.url,
        enabled_events=body.enabled_events,
        description=body.description,
        source=request.remote,
    )
    return json_response(_with_secret(created))


async def list_endpoints(request: web.Request) -> web.Response:
    identity = require_identity(request)
    page = page_params(request)
    endpoints, has_more = await request.app[WEBHOOKS].page(
        identity.tenant,
        limit=page.limit,
        starting_after=page.starting_after,
        ending_before=page.ending_before,
    )
    return render_list([render_endpoint(e) for e in endpoints], has_more, LIST_URL)


async def get_endpoint(request: web.Request) -> web.Response:
    identity = require_identity(request)
    endpoint = await request.app[WEBHOOKS].get(identity.tenant, request.match_info["id"])
    return json_response(render_endpoint(endpoint))


async def delete_endpoint(request: web.Request) -> web.Response:
    identity = require_identity(request)
    endpoint_id = request.match_info["id"]
    await request.app[WEBHOOKS].delete(identity, endpoint_id, source=request.remote)
    return json_response(schemas.DeletedWebhookEndpoint(id=endpoint_id))


async def rotate_secret(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await read_json(request, schemas.RotateWebhookSecretRequest)
    rotated = await request.app[WEBHOOKS].rotate(
        identity,
        request.match_info["id"],
        expires_in=None if body.expires_in is None else float(body.expires_in),
        source=request.remote,
    )
    return json_response(_with_secret(rotated))


async def redeliver_event(request: web.Request) -> web.Response:
    identity = require_identity(request)
    body = await read_json(request, schemas.RedeliverEventRequest)
    event_id = request.match_info["id"]
    deliveries = await request.app[WEBHOOKS].redeliver(
        identity, event_id, endpoint_id=body.endpoint, source=request.remote
    )
    return json_response(
        schemas.Redelivery(event=event_id, deliveries=[render_delivery(d) for d in deliveries])
    )


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/webhook_endpoints", create_endpoint, roles=CLIENT)
    add(app, "GET", "/v1/webhook_endpoints", list_endpoints, roles=CLIENT)
    add(app, "GET", "/v1/webhook_endpoints/{id}", get_endpoint, roles=CLIENT)
    add(app, "DELETE", "/v1/webhook_endpoints/{id}", delete_endpoint, roles=CLIENT)
    add(app, "POST", "/v1/webhook_endpoints/{id}/rotate_secret", rotate_secret, roles=CLIENT)
    add(app, "POST", "/v1/events/{id}/redeliver", redeliver_event, roles=CLIENT)
