"""Metrics.http_route: the request metrics' children bound once per route and method, same series."""

from __future__ import annotations

from aiohttp import web

from gateway.metrics import Metrics
from gateway.middlewares import route_templates


def samples(metrics: Metrics) -> list[bytes]:
    return [line for line in metrics.render().splitlines() if b"_created" not in line]  # creation times


def test_bound_children_count_what_labels_would() -> None:
    bound, labelled = Metrics(), Metrics()
    route = bound.http_route("/v1/payments/{id}", "GET")
    assert bound.http_route("/v1/payments/{id}", "GET") is route
    for status, seconds in ((200, 0.004), (200, 0.02), (404, 0.001)):
        route.observe(status, seconds)
        labelled.http_requests.labels("/v1/payments/{id}", "GET", str(status)).inc()
        labelled.http_latency.labels("/v1/payments/{id}", "GET").observe(seconds)
    assert samples(bound) == samples(labelled)


def test_a_route_bound_at_start_up_exports_nothing_until_used() -> None:
    metrics = Metrics()
    metrics.http_route("/v1/ping", "GET")
    assert b"/v1/ping" not in metrics.render()


def test_route_templates_name_every_route_as_the_access_line_does() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/payments/{id}", handler)
    app.router.add_post("/v1/payments", handler)
    assert set(route_templates(app)) == {
        ("/v1/payments/{id}", "GET"),
        ("/v1/payments/{id}", "HEAD"),
        ("/v1/payments", "POST"),
    }
