"""Traffic protection for the client API (issue #6, docs/traffic.md).

Stripe's four limiters, per tenant and per route class (``classes``): request rate
(``ratelimit``, the `limits` library over memory or Redis), concurrent requests
(``concurrency``), load shedding by criticality on event-loop lag and in-flight work
(``shedding``), and hostile-input limits on heads (``protocol``) and bodies (``inputs``).
``middleware`` wires them into one aiohttp middleware plus a cleanup_ctx.
"""

from __future__ import annotations

from gateway.traffic.classes import RouteClass, classify
from gateway.traffic.inputs import check_json_depth, check_json_shape
from gateway.traffic.middleware import (
    TRAFFIC,
    Traffic,
    check_customer_limit,
    traffic_context,
    traffic_middleware,
)
from gateway.traffic.protocol import guarded_handler_factory

__all__ = [
    "TRAFFIC",
    "RouteClass",
    "Traffic",
    "check_customer_limit",
    "check_json_depth",
    "check_json_shape",
    "classify",
    "guarded_handler_factory",
    "traffic_context",
    "traffic_middleware",
]
