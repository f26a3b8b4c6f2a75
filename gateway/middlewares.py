"""Request middlewares, outermost first: context (id, logs, metrics) → errors → identity."""

from __future__ import annotations

import secrets
import time

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import errors
from gateway.identity import Identity, IdentityRejected, identity_from_peercert
from gateway.keys import IDENTITY, METRICS, REQUEST_ID, SETTINGS
from gateway.logs import get_logger

log = get_logger("gateway.access")

# Routes served without a tenant identity check: connector callbacks are authenticated by the
# connector's signature (the TLS client certificate is still required at the handshake).
_PUBLIC_ROUTES: frozenset[str] = frozenset(
    {
        # Connector callbacks come from banks and wallets, not tenants: the connector's signature
        # check authenticates them (the TLS client certificate is still required at the handshake).
        "/v1/connectors/{name}/callbacks",
    }
)


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def route_label(request: web.Request) -> str:
    """The route template ("/v1/payments/{id}"), never the raw path, to bound label cardinality."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        headers = response.headers
        headers["Request-Id"] = request_id
        headers["Server"] = "payhub"  # not aiohttp's default, which names the Python and aiohttp versions
        return response
    finally:
        elapsed = time.perf_counter() - started
        route = route_label(request)
        metrics = request.app[METRICS]
        metrics.http_requests.labels(route, request.method, str(status)).inc()
        metrics.http_latency.labels(route, request.method).observe(elapsed)
        identity = request.get(IDENTITY)
        log.info(
            "http.request",
            method=request.method,
            path=request.path_qs,
            route=route,
            status=status,
            duration_ms=round(elapsed * 1000, 3),
            tenant=identity.tenant if identity else None,
            peer=request.remote,
        )


def _error_response(request: web.Request, exc: errors.ApiError) -> web.Response:
    response = web.Response(
        status=exc.status, body=exc.body(request.get(REQUEST_ID, "")), content_type="application/json"
    )
    response.headers.update(exc.headers)
    return response


def _from_http_exception(exc: web.HTTPException) -> errors.ApiError:
    if isinstance(exc, web.HTTPNotFound):
        return errors.NotFound("Unrecognized request URL.", code="resource_missing")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return errors.MethodNotAllowed(
            f"{exc.method} is not allowed on this URL.", headers={"Allow": allowed}
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.PayloadTooLarge("Request body is too large.")
    if exc.status >= 500:
        return errors.InternalError("An internal error occurred.")
    return errors.InvalidRequest(exc.reason, code="bad_request")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where exceptions become the public error shape; no traceback ever leaves."""
    try:
        return await handler(request)
    except errors.ApiError as exc:
        return _error_response(request, exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and other non-errors pass through unchanged
            raise
        return _error_response(request, _from_http_exception(exc))
    except Exception:
        log.exception("http.unhandled_error", path=request.path)
        return _error_response(request, errors.InternalError("An internal error occurred."))


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.match_info.http_exception is not None or route_label(request) in _PUBLIC_ROUTES:
        return await handler(request)
    transport = request.transport
    peercert = transport.get_extra_info("peercert") if transport is not None else None
    try:
        identity = identity_from_peercert(peercert, request.app[SETTINGS])
    except IdentityRejected as exc:
        request.app[METRICS].authentication_failures.inc()
        raise errors.AuthenticationFailed(f"Client certificate not accepted: {exc}.") from exc
    request[IDENTITY] = identity
    structlog.contextvars.bind_contextvars(tenant=identity.tenant)
    return await handler(request)


def require_identity(request: web.Request) -> Identity:
    return request[IDENTITY]
