"""Routing fallback over real sockets: an acquirer nobody can reach hands the payment to the next
connector (no money can have moved); an acquirer that was reached never does. The same for an HTTP
connector: a bank that refuses the connection is fallen back from; a bank that read the request and
answered something the connector cannot read as "not accepted" (429, 503, …) is not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec
import pytest
from aiohttp import web

from config.settings import ConnectorSettings, Settings
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.support.acquirer import acquirer
from tests.support.api import api_client, card_payment
from tests.support.mtls import gateway
from tests.support.processes import free_port


def routed(settings: Settings, acquirer_port: int) -> Settings:
    return msgspec.structs.replace(
        settings,
        routing=msgspec.structs.replace(settings.routing, card=["iso8583_card", "inprocess"]),
        sandbox=msgspec.structs.replace(settings.sandbox, acquirer=acquirer_port),
        connectors={
            **settings.connectors,
            "iso8583_card": ConnectorSettings(read_timeout=0.5, connect_timeout=0.5),
        },
    )


async def test_unreachable_acquirer_falls_back_to_the_next_connector(
    settings: Settings, pki: PkiPaths
) -> None:
    async with gateway(routed(settings, free_port())) as gw, api_client(pki, "acme", gw.api_port) as api:
        paid = await api.post("/v1/payments", card_payment(amount=2500))
        assert paid.status == 200, paid.body
        assert (paid.body["status"], paid.body["connector"]) == ("succeeded", "inprocess")
        async with gw.api[DB_POOL].acquire() as conn:
            attempts = await conn.fetch(
                "SELECT connector, status, decline_code FROM payment_attempts "
                "WHERE payment_id = $1 ORDER BY created",
                paid.body["id"],
            )
        assert [tuple(a) for a in attempts] == [
            ("iso8583_card", "failed", "connector_unavailable"),
            ("inprocess", "succeeded", None),
        ]


async def test_a_decline_from_a_reached_acquirer_never_falls_back(settings: Settings, pki: PkiPaths) -> None:
    async with (
        acquirer() as sim,
        gateway(routed(settings, sim.port)) as gw,
        api_client(pki, "acme", gw.api_port) as api,
    ):
        declined = await api.post("/v1/payments", card_payment("4000000000000002"))
        assert (declined.body["status"], declined.body["connector"]) == ("failed", "iso8583_card")
        assert declined.body["failure"]["code"] == "do_not_honor"


# ---- an HTTP connector first (bank transfer), the in-process connector second -------------------


@dataclass
class Bank:
    """A bank that reads every request in full and answers ``status`` to all of them."""

    status: int
    seen: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path, await request.read()))
        return web.json_response({"error": "busy", "message": "try later"}, status=self.status)


@asynccontextmanager
async def bank_answering(status: int) -> AsyncIterator[tuple[Bank, int]]:
    bank = Bank(status)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bank.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield bank, int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def bank_first(settings: Settings, bank_port: int) -> Settings:
    return msgspec.structs.replace(
        settings,
        routing=msgspec.structs.replace(settings.routing, bank_transfer=["bank_transfer", "inprocess"]),
        connectors={
            **settings.connectors,
            "bank_transfer": ConnectorSettings(
                secret="whsec_e2e_routing",
                endpoint=f"http://127.0.0.1:{bank_port}",
                read_timeout=1.0,
                connect_timeout=0.5,
            ),
        },
    )


def bank_payment() -> dict[str, object]:
    return {
        "amount": 4200,
        "currency": "CNY",
        "payment_method": {"type": "bank_transfer", "bank_transfer": {"account_number": "6222000011112222"}},
    }


async def authorize_attempts(gw: RunningGateway, payment_id: str) -> list[tuple[str, str, str]]:
    async with gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, connector, status FROM payment_attempts "
            "WHERE payment_id = $1 AND operation = 'authorize' ORDER BY created",
            payment_id,
        )
    return [(row["id"], row["connector"], row["status"]) for row in rows]


@pytest.mark.parametrize("status", [429, 503])
async def test_a_bank_that_read_the_request_and_answered_is_never_fallen_back_from(
    settings: Settings, pki: PkiPaths, status: int
) -> None:
    async with (
        bank_answering(status) as (bank, port),
        gateway(bank_first(settings, port)) as gw,
        api_client(pki, "acme", gw.api_port) as api,
    ):
        paid = await api.post("/v1/payments", bank_payment())
        assert paid.status == 200, paid.body
        # The bank may have made the transfer: the payment waits for the status inquiry, at this bank.
        assert (paid.body["status"], paid.body["connector"]) == ("processing", "bank_transfer")
        [(attempt_id, connector, attempt_status)] = await authorize_attempts(gw, paid.body["id"])
        assert (connector, attempt_status) == ("bank_transfer", "unknown")
        transfers = [body for method, path, body in bank.seen if (method, path) == ("POST", "/transfers")]
        assert transfers  # it did reach the bank, under the one attempt id
        assert all(attempt_id.encode() in body for body in transfers)


async def test_a_bank_refusing_the_connection_is_fallen_back_from(settings: Settings, pki: PkiPaths) -> None:
    async with (
        gateway(bank_first(settings, free_port())) as gw,
        api_client(pki, "acme", gw.api_port) as api,
    ):
        paid = await api.post("/v1/payments", bank_payment())
        assert paid.status == 200, paid.body
        assert paid.body["connector"] == "inprocess"
        attempts = await authorize_attempts(gw, paid.body["id"])
        assert [connector for _, connector, _ in attempts] == ["bank_transfer", "inprocess"]
        assert attempts[0][2] == "failed"  # closed as reaching nobody; the in-process one carries on
