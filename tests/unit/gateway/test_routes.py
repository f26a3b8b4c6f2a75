"""Every route of the client API declares its roles, and the declarations follow DESIGN §5.

The router is enumerated: a route added with ``app.router.add_*`` instead of ``routes.add`` fails
here (the identity middleware would refuse it at run time anyway, fail closed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from config.settings import load_settings
from gateway.api.routes import CLIENT, CLIENT_OR_OPERATOR, CONNECTOR, OPERATOR, ROUTES, Roles, add
from gateway.app import create_app

# DESIGN §5, by path prefix: the first match decides.
POLICY: tuple[tuple[str, Roles], ...] = (
    ("/v1/reviews", OPERATOR),
    ("/v1/manual_reviews", OPERATOR),  # the manual queue (docs/faults.md)
    ("/v1/admin", OPERATOR),
    ("/v1/ping", CLIENT_OR_OPERATOR),
    ("/v1/openapi.json", CLIENT_OR_OPERATOR),
    ("/v1/billers", CLIENT_OR_OPERATOR),  # the shared catalog: no customer data (docs/architecture.md)
    ("/v1/connectors/", CONNECTOR),
    # Everything else moves money or holds customer data: payments, refunds, tokens, accounts,
    # bills, events, reminders, preferences, webhooks, devices, FX quotes.
    ("/v1/", CLIENT),
)


def expected_roles(path: str) -> Roles:
    return next(roles for prefix, roles in POLICY if path.startswith(prefix))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> web.Application:
    home: Path = tmp_path_factory.mktemp("home")
    return create_app(load_settings(env={"PAYHUB_HOME": str(home)}))


def test_every_route_declares_its_roles(app: web.Application) -> None:
    table = app[ROUTES]
    undeclared = [
        f"{route.method} {route.resource.canonical}"
        for route in app.router.routes()
        if route.resource is not None and table.roles(route) is None
    ]
    assert undeclared == [], "register these with gateway.api.routes.add(..., roles=...)"


def test_declared_roles_follow_the_design(app: web.Application) -> None:
    table = app[ROUTES]
    wrong = {}
    for route in app.router.routes():
        assert route.resource is not None
        path = route.resource.canonical
        if (declared := table.roles(route)) != expected_roles(path):
            wrong[f"{route.method} {path}"] = sorted(declared or ())
    assert wrong == {}


def test_get_routes_declare_their_head_route_too() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    add(app, "GET", "/v1/things/{id}", handler, roles=CLIENT)
    methods = {route.method: app[ROUTES].roles(route) for route in app.router.routes()}
    assert methods == {"GET": CLIENT, "HEAD": CLIENT}


@pytest.mark.parametrize("roles", [frozenset(), CONNECTOR | CLIENT])
def test_a_route_admits_someone_and_connector_stands_alone(roles: Roles) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    with pytest.raises(ValueError, match="roles must be"):
        add(web.Application(), "POST", "/v1/things", handler, roles=roles)
