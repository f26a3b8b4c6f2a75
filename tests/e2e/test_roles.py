"""Roles per route over real mTLS (DESIGN §5): an operator certificate cannot move money or read
customer data, a client certificate cannot reach operator routes, both can ping and read the spec.

The router is enumerated, so a new route is covered the day it is added. No operator route exists
yet, so this module's gateway carries one probe route (``/v1/admin/_probe``) to exercise that side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.api import ping
from gateway.api.routes import CONNECTOR, OPERATOR, ROUTES, Roles, add
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.support.api import Api, Reply, api_client
from tests.support.mtls import gateway

PROBE = "/v1/admin/_probe"


async def probe(request: web.Request) -> web.Response:
    return web.json_response({"object": "probe"})


@pytest.fixture
async def gw(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[RunningGateway]:
    real_setup = ping.setup

    def setup_with_probe(app: web.Application) -> None:
        real_setup(app)
        add(app, "GET", PROBE, probe, roles=OPERATOR)

    monkeypatch.setattr(ping, "setup", setup_with_probe)  # create_app calls ping.setup(app)
    async with gateway(settings) as running:
        yield running


@pytest.fixture
async def ops(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "ops", gw.api_port) as api:
        yield api


def routes_refusing(gw: RunningGateway, role: str) -> list[tuple[str, str]]:
    """(method, path) of every route whose declared roles leave ``role`` out (connector routes aside)."""
    table = gw.api[ROUTES]
    found = []
    for route in gw.api.router.routes():
        roles: Roles | None = table.roles(route)
        assert route.resource is not None and roles is not None
        if roles != CONNECTOR and role not in roles:
            path = (
                route.resource.canonical.replace("{id}", "x_1")
                .replace("{name}", "x")
                .replace("{list}", "deny")
            )
            found.append((route.method, path))
    return found


async def send(api: Api, method: str, path: str) -> Reply:
    if method == "POST":
        return await api.post(path, {})
    return await api.request(method, path)


def assert_permission_error(reply: Reply, what: str) -> None:
    assert reply.status == 403, what
    assert reply.headers.get("Connection") != "close", what  # a role refusal keeps the connection
    if reply.body is not None:  # HEAD answers carry no body
        assert reply.body["error"]["type"] == "permission_error", what
        assert reply.body["error"]["code"] == "role_not_allowed", what


async def test_operator_certificate_is_refused_on_every_client_route(gw: RunningGateway, ops: Api) -> None:
    refusing = routes_refusing(gw, "operator")
    assert ("POST", "/v1/payments") in refusing
    assert ("POST", "/v1/tokens") in refusing
    for method, path in refusing:
        assert_permission_error(await send(ops, method, path), f"{method} {path}")


async def test_client_certificate_is_refused_on_every_operator_route(gw: RunningGateway, acme: Api) -> None:
    refusing = routes_refusing(gw, "client")
    assert ("GET", PROBE) in refusing
    for method, path in refusing:
        assert_permission_error(await send(acme, method, path), f"{method} {path}")


async def test_operator_route_admits_an_operator(ops: Api) -> None:
    reply = await ops.get(PROBE)
    assert (reply.status, reply.body) == (200, {"object": "probe"})


@pytest.mark.parametrize("path", ["/v1/ping", "/v1/openapi.json", "/v1/billers"])
async def test_ping_spec_and_catalog_answer_both_roles(acme: Api, ops: Api, path: str) -> None:
    for api in (acme, ops):
        reply = await api.get(path)
        assert reply.status == 200, reply.body
    assert (await ops.get("/v1/ping")).body["role"] == "operator"


async def test_refused_before_anything_is_stored(gw: RunningGateway, ops: Api) -> None:
    """The role check comes before the handler: no payment, token or idempotency record is written."""
    card = {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030, "cvc": "123"}
    body = {"amount": 100, "currency": "CNY", "payment_method": {"type": "card", "card": card}}
    assert_permission_error(await ops.post("/v1/payments", body), "POST /v1/payments")
    assert_permission_error(await ops.post("/v1/tokens", {"card": card}), "POST /v1/tokens")
    async with gw.api[DB_POOL].acquire() as conn:
        for table in ("payments", "card_tokens", "idempotency_keys"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
