"""Route classes: what a request costs and how much it matters, decided from method + route template.

Limits and the load shedder work per class rather than per route so that routes added later
(``/v1/payments``, ``/v1/refunds``, ...) are governed the moment they are registered, without
touching this package. The class comes from the route *template* ("/v1/payments/{id}/capture"),
never the raw path, so the cache below stays as small as the route table.

Criticality, highest first: ``payment_write`` (creates or moves money; shed last), ``write`` and
``ops`` (operator routes), ``read`` (lists and catalog reads; shed first).
"""

from __future__ import annotations

import enum
import functools
import re

from aiohttp import web


class RouteClass(enum.StrEnum):
    PAYMENT_WRITE = "payment_write"
    WRITE = "write"
    READ = "read"
    OPS = "ops"


# POSTs that create or move money (DESIGN §6): these carry Idempotency-Key and get the payment budget.
_PAYMENT_WRITE = re.compile(
    r"^/v1/(?:payments|refunds"
    r"|payments/\{[^/{}]+\}/(?:capture|confirm|cancel)"
    r"|accounts/\{[^/{}]+\}/topups)$"
)
# Operator routes (DESIGN §5): the review queue and administration.
_OPS = re.compile(r"^/v1/(?:reviews|admin)(?:/|$)")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

UNMATCHED = "unmatched"


@functools.lru_cache(maxsize=1024)
def classify(method: str, template: str) -> RouteClass:
    """The class of ``method`` on the route ``template`` (cached: templates are a small, fixed set)."""
    if _OPS.match(template):
        return RouteClass.OPS
    if method in _SAFE_METHODS:
        return RouteClass.READ
    if method == "POST" and _PAYMENT_WRITE.match(template):
        return RouteClass.PAYMENT_WRITE
    return RouteClass.WRITE


def route_template(request: web.Request) -> str:
    """The matched route's template, or ``"unmatched"`` for 404/405 (same rule as the access log)."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else UNMATCHED


def classify_request(request: web.Request) -> RouteClass:
    return classify(request.method, route_template(request))
