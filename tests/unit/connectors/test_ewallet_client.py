"""The e-wallet connector against the wallet simulator over real sockets (no gateway, no database)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

from config.settings import ConfigError, ConnectorSettings, SandboxSettings, ServerSettings, Settings
from connectors.base import (
    CallbackNotice,
    ConnectorUnavailable,
    DuplicateReference,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
    PaymentRequest,
)
from connectors.ewallet import EwalletConnector
from connectors.ewallet.client import OrderAlreadyPaid
from connectors.http import OutboundClient
from connectors.registry import ConnectorDeps
from connectors.sandbox.ewallet import EwalletSandbox
from gateway.metrics import Metrics
from tests.unit.connectors.peers import StubPeer

SECRET = "whsec_unit_wallet"


@dataclass
class Env:
    wallet: EwalletSandbox
    connector: EwalletConnector
    notices: list[CallbackNotice] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_for_notice(self) -> CallbackNotice:
        async with asyncio.timeout(5):
            while not self.notices:
                self.arrived.clear()
                await self.arrived.wait()
        return self.notices.pop(0)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    holder: list[Env] = []

    async def receive(request: web.Request) -> web.Response:
        env = holder[0]
        env.notices.append(env.connector.parse_callback(request.headers, await request.read()))
        env.arrived.set()
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post("/v1/connectors/ewallet/callbacks", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    config = ConnectorSettings(secret=SECRET, options={"callback_base": f"http://127.0.0.1:{port}"})
    signing = Settings(server=ServerSettings(home=str(tmp_path)), connectors={"ewallet": config})
    wallet = await EwalletSandbox(signing, pay_after=None, port=0).start()
    settings = msgspec.structs.replace(signing, sandbox=SandboxSettings(ewallet=wallet.port))
    async with aiohttp.ClientSession() as session:
        deps = ConnectorDeps(settings, OutboundClient(session, Metrics()), Metrics())
        holder.append(Env(wallet, EwalletConnector.create("ewallet", config, deps)))
        yield holder[0]
    await wallet.close()
    await runner.cleanup()


def order(attempt: str, provider: str = "alipay", amount: int = 990) -> PaymentRequest:
    return PaymentRequest(
        attempt_id=attempt,
        payment_id="pay_" + attempt,
        tenant="acme",
        amount=amount,
        currency="CNY",
        method="wallet",
        details={"provider": provider},
    )


async def test_qr_order_paid_then_notified(env: Env) -> None:
    opened = await env.connector.authorize(order("att_qr"))
    assert opened.outcome is Outcome.REQUIRES_ACTION
    assert opened.next_action is not None and opened.next_action["type"] == "qr_code"
    assert opened.reference is not None
    unpaid = await env.connector.sync(attempt_id="att_qr", operation="authorize")
    assert unpaid.outcome is Outcome.REQUIRES_ACTION  # nothing new for the resolver
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{env.wallet.base_url}/simulate/pay/{opened.reference}") as reply,
    ):
        assert reply.status == 200
    notice = await env.wait_for_notice()
    assert (notice.attempt_id, notice.result.outcome) == ("att_qr", Outcome.SUCCEEDED)
    assert (await env.connector.sync(attempt_id="att_qr", operation="authorize")).outcome is Outcome.SUCCEEDED
    with pytest.raises(OrderAlreadyPaid):
        await env.connector.void(attempt_id="att_v", reference=opened.reference)
    refund = await env.connector.refund(
        attempt_id="att_rf", reference=opened.reference, amount=990, currency="CNY"
    )
    assert refund.outcome is Outcome.SUCCEEDED


async def test_paypal_redirects_and_auto_pay(env: Env) -> None:
    env.wallet.pay_after = 0.05
    opened = await env.connector.authorize(order("att_pp", "paypal"))
    assert opened.next_action is not None and opened.next_action["type"] == "redirect"
    async with aiohttp.ClientSession() as session, session.get(opened.next_action["url"]) as page:
        assert page.status == 200
        assert "Pay" in await page.text()
    notice = await env.wait_for_notice()
    assert notice.result.outcome is Outcome.SUCCEEDED


async def test_close_and_time_out(env: Env) -> None:
    opened = await env.connector.authorize(order("att_close"))
    assert opened.reference is not None
    closed = await env.connector.void(attempt_id="att_void", reference=opened.reference)
    assert closed.outcome is Outcome.SUCCEEDED
    again = await env.connector.void(attempt_id="att_void2", reference=opened.reference)
    assert again.outcome is Outcome.SUCCEEDED  # closing twice is harmless
    synced = await env.connector.sync(attempt_id="att_close", operation="authorize")
    assert (synced.outcome, synced.decline_code) == (Outcome.FAILED, "wallet_order_closed")
    env.wallet.order_timeout = 0.05
    await env.connector.authorize(order("att_timeout"))
    await asyncio.sleep(0.1)
    expired = await env.connector.sync(attempt_id="att_timeout", operation="authorize")
    assert expired.decline_code == "wallet_order_closed"


async def test_dedup_and_refusals(env: Env) -> None:
    first = await env.connector.authorize(order("att_d"))
    assert await env.connector.authorize(order("att_d")) == first
    with pytest.raises(DuplicateReference):
        await env.connector.authorize(order("att_d", amount=1))
    with pytest.raises(InvalidParams):
        await env.connector.authorize(order("att_x", provider="bitcoin"))
    unknown = await env.connector.sync(attempt_id="att_never", operation="authorize")
    assert unknown.decline_code == "connector_unavailable"


def test_a_secret_is_required() -> None:
    settings = Settings()
    with pytest.raises(ConfigError, match="secret"):
        EwalletConnector.create("ewallet", ConnectorSettings(), ConnectorDeps(settings, None, Metrics()))  # type: ignore[arg-type]


# ---- a wallet that was reached never means "nothing happened" (issue 9) -------------------------

# Statuses the wallet's API gives no "not accepted" meaning to: the order may exist.
UNMAPPED = [204, 401, 403, 404, 408, 429, 500, 503]


@pytest.fixture
async def outbound() -> AsyncIterator[OutboundClient]:
    async with aiohttp.ClientSession() as session:
        yield OutboundClient(session, Metrics())


def wallet_at(endpoint: str, http: OutboundClient) -> EwalletConnector:
    config = ConnectorSettings(
        secret=SECRET,
        endpoint=endpoint,
        options={"callback_base": "http://127.0.0.1:9"},
        connect_timeout=0.3,
        read_timeout=2.0,
    )
    return EwalletConnector.create("ewallet", config, ConnectorDeps(Settings(), http, Metrics()))


@pytest.mark.parametrize("status", UNMAPPED)
async def test_an_unmapped_answer_to_authorize_is_unknown_not_unavailable(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):  # never ConnectorUnavailable: that would route elsewhere
        await wallet_at(stub_peer.url, outbound).authorize(order("att_unmapped"))
    assert [path for _, path, _ in stub_peer.seen][:1] == ["/orders"]  # the wallet did get it
    assert b"att_unmapped" in stub_peer.seen[0][2]


@pytest.mark.parametrize(
    ("status", "error"), [(400, InvalidParams), (422, InvalidParams), (409, DuplicateReference)]
)
async def test_documented_refusals_of_authorize_stay_definite(
    stub_peer: StubPeer, outbound: OutboundClient, status: int, error: type[Exception]
) -> None:
    stub_peer.status = status
    with pytest.raises(error):
        await wallet_at(stub_peer.url, outbound).authorize(order("att_refused"))


@pytest.mark.parametrize("status", [204, 401, 403, 408, 429, 500, 503])
async def test_an_unmapped_answer_to_refund_leaves_it_unknown(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):
        await wallet_at(stub_peer.url, outbound).refund(
            attempt_id="att_rf", reference="ord_1", amount=100, currency="CNY"
        )


async def test_a_retry_refused_after_a_try_reached_the_wallet_is_still_unknown(
    stub_peer: StubPeer, outbound: OutboundClient
) -> None:
    stub_peer.status, stub_peer.vanish = 503, True
    with pytest.raises(OutcomeUnknown):
        await wallet_at(stub_peer.url, outbound).authorize(order("att_gone"))
    assert len(stub_peer.seen) == 1


async def test_refused_connection_is_unavailable(closed_port: int, outbound: OutboundClient) -> None:
    with pytest.raises(ConnectorUnavailable):
        await wallet_at(f"http://127.0.0.1:{closed_port}", outbound).authorize(order("att_refused_conn"))


async def test_connect_timeout_is_unavailable(unanswered_port: int, outbound: OutboundClient) -> None:
    with pytest.raises(ConnectorUnavailable):
        await wallet_at(f"http://127.0.0.1:{unanswered_port}", outbound).authorize(order("att_ct"))
