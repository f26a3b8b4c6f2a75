"""The traffic middleware and its resources (docs/traffic.md).

It runs inside ``identity_middleware`` (so the tenant is known) and applies, cheapest refusal
first, so that refused work costs as little as possible:

1. load shedding by route class (global to the process, no I/O)             → 503 overloaded
2. the tenant's request-rate budget for the route class (memory or Redis)   → 429 rate_limited
3. the tenant's concurrent-request limit                                    → 429 too_many_concurrent_requests
4. the body: read within ``body_timeout``, size cap, JSON depth and string length
                                                                            → 408 / 413 / 400

then calls the handler and adds ``RateLimit-Limit/Remaining/Reset`` to its answer, error or not.
Per-customer limits need the parsed body, so handlers call ``check_customer_limit`` themselves.
Requests that match no route carry no identity: they are shed like reads and otherwise pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter

from config.settings import InputLimits
from gateway import errors
from gateway.keys import IDENTITY, METRICS, SETTINGS
from gateway.metrics import Metrics
from gateway.traffic.classes import RouteClass, classify, route_template
from gateway.traffic.concurrency import ConcurrencyLimiter
from gateway.traffic.inputs import RequestTimeout, check_json_shape, read_body
from gateway.traffic.ratelimit import RateLimits, open_storage
from gateway.traffic.shedding import LoadShedder
from gateway.workers.tasks import background

_JSON_TYPES = frozenset({"application/json", "application/octet-stream"})  # the latter: no Content-Type
# payhub_refused_requests_total reasons counted here (protocol.py counts those of request heads).
BODY_REFUSALS = ("body_timeout", "body_too_large", "json_too_deep", "string_too_long")


@dataclass(frozen=True, slots=True)
class Traffic:
    """Per-application traffic-protection state (created by ``traffic_context``)."""

    rates: RateLimits
    concurrency: ConcurrencyLimiter
    shedder: LoadShedder
    inputs: InputLimits
    max_body_bytes: int
    metrics: Metrics
    # Refusal counters, bound once here rather than with .labels() on each refusal.
    refused: dict[str, Counter] = field(init=False)
    too_concurrent: dict[RouteClass, Counter] = field(init=False)

    def __post_init__(self) -> None:
        refused = {reason: self.metrics.refused_requests.labels(reason) for reason in BODY_REFUSALS}
        limited = self.metrics.rate_limited_requests
        too_concurrent = {rc: limited.labels("concurrency", rc.value) for rc in RouteClass}
        object.__setattr__(self, "refused", refused)
        object.__setattr__(self, "too_concurrent", too_concurrent)


TRAFFIC = web.AppKey("traffic", Traffic)


async def traffic_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the budget storage (Redis client pool lifetime) and the event-loop lag monitor."""
    settings = app[SETTINGS]
    metrics = app[METRICS]
    limits = settings.limits
    async with open_storage(settings) as storage:
        rates = RateLimits(limits, storage, metrics)
        try:
            await rates.check_storage()
            shedder = LoadShedder(limits.shedding, metrics)
            concurrency = ConcurrencyLimiter(lambda tenant: limits.rates_for(tenant).max_concurrent)
            app[TRAFFIC] = Traffic(
                rates, concurrency, shedder, limits.input, settings.server.max_body_bytes, metrics
            )
            async with background(shedder.monitor(), name="lag-monitor"):
                await asyncio.sleep(0)  # let it start: a task cancelled unstarted leaves a warning
                yield
        finally:
            await rates.close()


async def _checked_body(request: web.Request, traffic: Traffic) -> None:
    limits = traffic.inputs
    announced = request.content_length
    if announced is not None and announced > traffic.max_body_bytes:
        # Refused on the announced length: waiting for 2 GiB that would be refused anyway is what a
        # slow sender wants.
        raise _too_large(request, traffic)
    try:
        body = await read_body(request, limits.body_timeout)
    except web.HTTPRequestEntityTooLarge as exc:
        raise _too_large(request, traffic) from exc
    except RequestTimeout as exc:
        traffic.refused["body_timeout"].inc()
        raise _hang_up(request, exc) from None
    content_type = request.content_type
    if body and (content_type in _JSON_TYPES or content_type.endswith("+json")):
        violation = check_json_shape(
            body, max_depth=limits.max_json_depth, max_string_bytes=limits.max_json_string_bytes
        )
        if violation is not None:
            traffic.refused[violation.reason].inc()
            raise violation.error


def _too_large(request: web.Request, traffic: Traffic) -> errors.ApiError:
    traffic.refused["body_too_large"].inc()
    limit = traffic.max_body_bytes
    return _hang_up(request, errors.PayloadTooLarge(f"Request body is larger than {limit} bytes."))


def _hang_up(request: web.Request, error: errors.ApiError) -> errors.ApiError:
    """A body refused before its end is not read to its end: the connection closes after the answer
    (aiohttp drains at most LINGERING_TIME first, gateway/server.py) instead of waiting on the rest."""
    request.protocol.close()
    error.headers["Connection"] = "close"
    return error


@web.middleware
async def traffic_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    traffic = request.app[TRAFFIC]
    route_class = classify(request.method, route_template(request))
    traffic.shedder.check(route_class)
    identity = request.get(IDENTITY)
    tenant = identity.tenant if identity is not None else None
    quota = None
    if tenant is not None:
        quota = await traffic.rates.check_tenant(tenant, route_class)
        try:
            traffic.concurrency.acquire(tenant)
        except errors.RateLimited:
            traffic.too_concurrent[route_class].inc()
            raise
    shedder = traffic.shedder
    shedder.in_flight += 1
    try:
        if request.body_exists:
            await _checked_body(request, traffic)
        response = await handler(request)
    except errors.ApiError as exc:
        if quota is not None:
            for name, value in quota.headers().items():
                exc.headers.setdefault(name, value)
        raise
    finally:
        shedder.in_flight -= 1
        if tenant is not None:
            traffic.concurrency.release(tenant)
    if quota is not None and not response.prepared:
        response.headers.update(quota.headers())
    return response


async def check_customer_limit(
    request: web.Request, customer_id: str | None, *, ip: str | None = None
) -> None:
    """Charge one payment creation to the customer's and the payer IP's budgets (within the tenant).

    For the payment-creating handlers, once the body is parsed: ``customer_id`` is ``customer.id``
    and ``ip`` is ``customer.ip`` from the request (not the TCP peer, which for a merchant back
    end is the merchant). Either may be None. Raises RateLimited (429 ``customer_rate_limited`` /
    ``ip_rate_limited`` with Retry-After) when a budget is spent; call it before any side effect.
    """
    identity = request.get(IDENTITY)
    if identity is None:
        return
    await request.app[TRAFFIC].rates.check_payer(identity.tenant, customer_id, ip)
