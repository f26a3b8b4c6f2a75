"""Request middlewares, outermost first: context (id, logs, metrics) → errors → identity."""

from __future__ import annotations

import os
import secrets
import time

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import errors
from gateway.api.routes import CONNECTOR, ROUTES, Roles
from gateway.identity import Identity, IdentityRejected, check_not_revoked, check_tenant, peer_of
from gateway.keys import CONFIG, IDENTITY, METRICS, REQUEST_ID, TLS
from gateway.logs import bind_tenant, close_request, get_logger, open_request

log = get_logger("gateway.access")


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def route_label(request: web.Request) -> str:
    """The route template ("/v1/payments/{id}"), never the raw path, to bound label cardinality."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


def route_templates(app: web.Application) -> list[tuple[str, str]]:
    """Every (route template, method) of ``app``'s router, as ``route_label`` names them."""
    return [
        (route.resource.canonical, route.method)
        for route in app.router.routes()
        if route.resource is not None
    ]


@web.middleware
async def context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and the request's one log line: the ``http.request`` access line, or the
    access fields on its first audit line when it wrote one (gateway.logs.close_request)."""
    request_id = new_request_id()
    request[REQUEST_ID] = request_id
    scope = open_request(request_id)  # request_id (and later tenant) on every line of this request
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
        method = request.method
        request.app[METRICS].http_route(route, method).observe(status, elapsed)
        identity = request.get(IDENTITY)
        close_request(
            scope,
            method=method,
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


_ASYNCPG_DIR = f"{os.sep}asyncpg{os.sep}"


def database_outage(exc: BaseException) -> bool:
    """The database is away (restarting, failing over, unreachable), not a bug: the request may be
    retried as is. Connection-level failures only; a bad statement or a constraint is still a 500."""
    if isinstance(exc, asyncpg.PostgresError):
        # 08: connection exceptions; 57P: admin or crash shutdown, cannot connect now.
        return str(getattr(exc, "sqlstate", "")).startswith(("08", "57P"))
    if isinstance(exc, asyncpg.InterfaceError):
        return "is closed" in str(exc) or "is closing" in str(exc)  # the connection or the pool
    if isinstance(exc, OSError):  # refused, reset, and TimeoutError (acquire, command_timeout)
        return _raised_in_asyncpg(exc)
    return False


def _raised_in_asyncpg(exc: BaseException) -> bool:
    """Whether asyncpg is on the way the error came (its own traceback, or the one of its cause,
    e.g. the cancellation behind an ``asyncio.timeout``): an OSError from elsewhere is not ours."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if _ASYNCPG_DIR in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return False


def _database_unavailable(request: web.Request, exc: BaseException) -> errors.ApiError:
    # One line per request and no traceback: an outage fails many requests the same known way.
    log.warning("http.database_unavailable", path=request.path, error=type(exc).__name__)
    return errors.Unavailable(
        "The database is unavailable; retry the request.",
        code="database_unavailable",
        headers={"Retry-After": "1"},
    )


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
    except Exception as exc:
        if database_outage(exc):
            return _error_response(request, _database_unavailable(request, exc))
        log.exception("http.unhandled_error", path=request.path)
        return _error_response(request, errors.InternalError("An internal error occurred."))


@web.middleware
async def identity_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Certificate → tenant → the route's roles (gateway/api/routes.py), on every request: a CRL
    reload or a tenant disabled by a config reload bites connections that are already open.

    Connector routes (signature-authenticated) and unmatched URLs (404/405) get the revocation
    check only; a route registered without roles is refused (fail closed)."""
    match_info = request.match_info
    unmatched = match_info.http_exception is not None
    roles = None if unmatched else request.app[ROUTES].roles(match_info.route)
    identity = _authenticate(request, tenant_needed=not unmatched and roles != CONNECTOR)
    if identity is not None:
        request[IDENTITY] = identity  # before the role check, so the access log names who was refused
        bind_tenant(identity.tenant)
        if roles is None or identity.role not in roles:
            raise _permission_denied(request, identity, roles)
    return await handler(request)


def _authenticate(request: web.Request, *, tenant_needed: bool) -> Identity | None:
    """The caller's identity (None when not needed); a refused certificate also loses its connection."""
    app = request.app
    peer = peer_of(request.transport)
    try:
        check_not_revoked(peer, app[TLS].revoked)
        return check_tenant(peer, app[CONFIG].current.tenants) if tenant_needed else None
    except IdentityRejected as exc:
        app[METRICS].authentication_failures.inc()
        # Refused now is refused from here on: answer this request, then close instead of keeping alive.
        request.protocol.close()
        raise errors.AuthenticationFailed(
            f"Client certificate not accepted: {exc}.", headers={"Connection": "close"}
        ) from exc


def _permission_denied(request: web.Request, identity: Identity, roles: Roles | None) -> errors.ApiError:
    if roles is None:
        log.error("identity.route_without_roles", route=route_label(request), method=request.method)
    return errors.PermissionDenied(f"The {identity.role} role may not use this route.")


def require_identity(request: web.Request) -> Identity:
    return request[IDENTITY]
