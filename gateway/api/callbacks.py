"""``POST /v1/connectors/{name}/callbacks``: asynchronous notices from banks, e-wallets and billers.

No tenant identity here (the route is in the identity middleware's public routes; the TLS client
certificate is still required at the handshake): a notice is trusted only because the connector
verified its signature over the raw body. The verified notice settles its attempt through
``PaymentService.settle_attempt``, which applies a definite answer once: a duplicate, a late or an
out-of-order notice answers ``applied: false`` with 200 so that the sender stops retrying, and
changes nothing. A bad signature answers 400 ``signature_invalid`` and changes nothing either; so
does a notice whose amount or currency is not its attempt's (400 ``callback_mismatch``).

Callbacks are counted by ``payhub_http_requests{route="/v1/connectors/{name}/callbacks",status}``.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from connectors.base import ConnectorError, SignatureError
from gateway import errors
from gateway.api.common import json_response
from gateway.api.routes import CONNECTOR, add
from gateway.keys import CONNECTORS, PAYMENTS
from gateway.logs import get_logger
from gateway.services.payments import CallbackMismatch

log = get_logger("gateway.api.callbacks")

PATH = "/v1/connectors/{name}/callbacks"
# Real notices are a few hundred bytes; anything much bigger is not a notice and not worth an HMAC.
MAX_CALLBACK_BYTES = 64 * 1024


class CallbackReceipt(msgspec.Struct):
    received: bool
    applied: bool  # false: a duplicate, late or not-final notice; nothing changed


async def post_callback(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    connector = request.app[CONNECTORS].payment.get(name)
    if connector is None:
        raise errors.NotFound(f"No such connector: '{name}'.", param="name")
    if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
        raise errors.PayloadTooLarge(f"A callback body is at most {MAX_CALLBACK_BYTES} bytes.")
    body = await request.read()
    if len(body) > MAX_CALLBACK_BYTES:
        raise errors.PayloadTooLarge(f"A callback body is at most {MAX_CALLBACK_BYTES} bytes.")
    try:
        notice = connector.parse_callback(request.headers, body)
    except SignatureError as exc:
        log.warning("callback.signature_invalid", connector=name, reason=str(exc))
        raise errors.InvalidRequest(
            "The callback signature could not be verified.", code="signature_invalid"
        ) from exc
    except ConnectorError as exc:
        log.warning("callback.unreadable", connector=name, code=exc.code, reason=str(exc))
        raise errors.InvalidRequest("The callback could not be read.", code=exc.code) from exc
    try:
        applied = await request.app[PAYMENTS].settle_attempt(
            name, notice.attempt_id, notice.result, action="payment.callback"
        )
    except CallbackMismatch as exc:
        # Authentic, but not about what the attempt asked for (an underpaid or other-currency
        # notice): nothing is settled on it; the status inquiry and the operators take it from here.
        raise errors.InvalidRequest(
            "The callback's amount or currency does not match the payment.", code="callback_mismatch"
        ) from exc
    log.info(
        "callback.received",
        connector=name,
        attempt=notice.attempt_id,
        outcome=notice.result.outcome.value,
        applied=applied,
    )
    return json_response(CallbackReceipt(received=True, applied=applied))


def setup(app: web.Application) -> None:
    add(app, "POST", PATH, post_callback, roles=CONNECTOR)
