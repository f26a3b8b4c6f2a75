"""Routes and the roles each admits (DESIGN §5), registered together so none can go undeclared.

    add(app, "POST", "/v1/payments", create_payment, roles=CLIENT)

A certificate's role is ``client`` or ``operator`` (its SPIFFE ID). ``CONNECTOR`` is not a
certificate role: it marks the routes that banks, wallets and billers call, which carry no tenant
identity and are authenticated by the connector's signature over the body instead. The identity
middleware refuses a route that is not in the table at all (fail closed), and
tests/unit/gateway/test_routes.py fails on one.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

Roles = frozenset[str]

CLIENT: Final[Roles] = frozenset({"client"})
OPERATOR: Final[Roles] = frozenset({"operator"})
CLIENT_OR_OPERATOR: Final[Roles] = CLIENT | OPERATOR
CONNECTOR: Final[Roles] = frozenset({"connector"})


class RouteTable:
    """The roles of each registered route, looked up by the matched route object (one dict hit)."""

    __slots__ = ("_roles",)

    def __init__(self) -> None:
        self._roles: dict[web.AbstractRoute, Roles] = {}

    def declare(self, route: web.AbstractRoute, roles: Roles) -> None:
        self._roles[route] = roles

    def roles(self, route: web.AbstractRoute) -> Roles | None:
        """The route's roles, or ``None`` when it was registered without :func:`add`."""
        return self._roles.get(route)


ROUTES = web.AppKey("routes", RouteTable)


def add(app: web.Application, method: str, path: str, handler: Handler, *, roles: Roles) -> None:
    """Register ``method path`` (GET also answers HEAD, as ``router.add_get`` does) with its roles."""
    if not roles or (CONNECTOR & roles and roles != CONNECTOR):
        raise ValueError(f"{method} {path}: roles must be client and/or operator, or connector alone")
    table = app.get(ROUTES)
    if table is None:
        app[ROUTES] = table = RouteTable()
    resource = app.router.add_resource(path)
    for each in ("HEAD", "GET") if method == "GET" else (method,):
        table.declare(resource.add_route(each, handler), roles)
