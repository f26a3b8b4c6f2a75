"""Routing fallback over real sockets: an acquirer nobody can reach hands the payment to the next
connector (no money can have moved); an acquirer that was reached never does."""

from __future__ import annotations

import msgspec

from config.settings import ConnectorSettings, Settings
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
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
