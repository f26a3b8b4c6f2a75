"""``/v1/ping``: who am I, as seen by the gateway — the smallest end-to-end check of mTLS."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from gateway.api.common import json_response, read_json
from gateway.api.routes import CLIENT_OR_OPERATOR, add
from gateway.logs import get_logger
from gateway.middlewares import require_identity

log = get_logger("gateway.api.ping")


class PingRequest(msgspec.Struct, forbid_unknown_fields=True):
    message: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


class PingResponse(msgspec.Struct):
    object: str
    tenant: str
    role: str
    livemode: bool


async def get_ping(request: web.Request) -> web.Response:
    identity = require_identity(request)
    return json_response(PingResponse("ping", identity.tenant, identity.role, livemode=False))


async def post_ping(request: web.Request) -> web.Response:
    """Echo check with a body: exercises body limits, JSON validation and log redaction."""
    identity = require_identity(request)
    body = await read_json(request, PingRequest)
    log.info("ping.message", message=body.message)
    return json_response(PingResponse("ping", identity.tenant, identity.role, livemode=False))


def setup(app: web.Application) -> None:
    add(app, "GET", "/v1/ping", get_ping, roles=CLIENT_OR_OPERATOR)
    add(app, "POST", "/v1/ping", post_ping, roles=CLIENT_OR_OPERATOR)
