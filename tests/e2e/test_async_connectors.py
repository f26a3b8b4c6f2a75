"""Bank transfers and e-wallets through the real gateway (mTLS, PostgreSQL) and the real simulators.

The bank and wallet simulators run in-process on free ports and call the gateway back over mutual
TLS with the ``sandbox`` client certificate, exactly as ``payhub serve --sandbox`` does. The bank
settles after 0.2 s here, well before the resolver's first status poll (1 s after the payment), so
"settled by callback" and "settled by status poll" are told apart by the audit trail.
Also: the FX feed (fresh vs stale) and the message sink, over their sockets.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest

from config.settings import ConnectorSettings, SandboxSettings, Settings
from connectors.fx_feed import StaleRates, fx_feed_from_settings
from connectors.http import OutboundClient
from connectors.sandbox.bank import BankSandbox
from connectors.sandbox.ewallet import EwalletSandbox
from connectors.sandbox.fx import FxSandbox
from connectors.sandbox.messages import MessageSink
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from gateway.metrics import Metrics
from gateway.server import RunningGateway
from tests.support.api import Api, api_client
from tests.support.mtls import gateway

BANK_SECRET = "whsec_e2e_bank"
WALLET_SECRET = "whsec_e2e_wallet"


@dataclass
class Stack:
    gw: RunningGateway
    acme: Api
    bank: BankSandbox
    wallet: EwalletSandbox


def listen_port() -> int:
    """A free port below the ephemeral range (32768+), so that no outgoing connection can take it
    between now and the gateway binding it. The simulators simply listen on port 0."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def with_secrets(settings: Settings) -> Settings:
    connectors = {
        **settings.connectors,
        "bank_transfer": ConnectorSettings(secret=BANK_SECRET),
        "ewallet": ConnectorSettings(secret=WALLET_SECRET),
    }
    return msgspec.structs.replace(settings, connectors=connectors)


def routed_to(
    settings: Settings, *, bank: int, ewallet: int, fx: int = 0, messages: int = 0, read_timeout: float = 10.0
) -> Settings:
    """The test settings, routed to the bank and wallet connectors at these ports, calling back here."""
    api_port = listen_port()
    options = {"callback_base": f"https://localhost:{api_port}"}
    return msgspec.structs.replace(
        settings,
        server=msgspec.structs.replace(settings.server, listen=f"127.0.0.1:{api_port}"),
        sandbox=SandboxSettings(bank=bank, ewallet=ewallet, fx=fx, messages=messages),
        connectors={
            **settings.connectors,
            "bank_transfer": ConnectorSettings(
                secret=BANK_SECRET, options=options, read_timeout=read_timeout
            ),
            "ewallet": ConnectorSettings(secret=WALLET_SECRET, options=options, read_timeout=read_timeout),
        },
        routing=msgspec.structs.replace(
            settings.routing, bank_transfer=["bank_transfer"], wallet=["ewallet"]
        ),
    )


@pytest.fixture
def read_timeout() -> float:
    """The bank and wallet connectors' read time-out (a test module may override this fixture)."""
    return 10.0


@pytest.fixture
async def stack(settings: Settings, pki: PkiPaths, read_timeout: float) -> AsyncIterator[Stack]:
    signing = with_secrets(settings)
    bank = await BankSandbox(signing, settle_after=0.2, port=0).start()
    wallet = await EwalletSandbox(signing, pay_after=None, port=0).start()
    try:
        routed = routed_to(settings, bank=bank.port, ewallet=wallet.port, read_timeout=read_timeout)
        async with gateway(routed) as gw, api_client(pki, "acme", gw.api_port) as acme:
            yield Stack(gw, acme, bank, wallet)
    finally:
        await wallet.close()
        await bank.close()


def bank_transfer(account: str, amount: int = 4200) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": "CNY",
        "payment_method": {"type": "bank_transfer", "bank_transfer": {"account_number": account}},
        "customer": {"id": "cus_bank"},
    }


def wallet(provider: str = "alipay", amount: int = 990) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": "CNY",
        "payment_method": {"type": "wallet", "wallet": {"provider": provider}},
    }


async def wait_for_status(api: Api, payment_id: str, status: str) -> dict[str, Any]:
    """Poll the payment until it has ``status`` (5 s at most)."""
    for _ in range(100):
        reply = await api.get(f"/v1/payments/{payment_id}")
        if reply.body["status"] == status:
            return dict(reply.body)
        await asyncio.sleep(0.05)
    raise AssertionError(f"{payment_id} is still {reply.body['status']}, not {status}")


async def wait_for_receipts(sandbox: BankSandbox | EwalletSandbox, reference: str, count: int) -> None:
    """Wait (5 s at most) until the gateway has answered ``count`` callbacks about ``reference``."""
    for _ in range(250):
        if len(receipts(sandbox, reference)) >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} callbacks about {reference} were not delivered")


async def settled_by(gw: RunningGateway, payment_id: str) -> list[str]:
    """The audit actions that moved the payment to succeeded (``payment.callback`` or ``payment.resolve``)."""
    async with gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT action FROM audit_events WHERE object = $1 AND outcome = 'succeeded' ORDER BY seq",
            payment_id,
        )
    return [row["action"] for row in rows]


async def ledger_kinds(gw: RunningGateway, payment_id: str) -> list[str]:
    async with gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT kind FROM ledger_transactions WHERE payment_id = $1 ORDER BY kind", payment_id
        )
    return [row["kind"] for row in rows]


async def events(api: Api, payment_id: str, event_type: str) -> list[dict[str, Any]]:
    reply = await api.get("/v1/events", object=payment_id, type=event_type, limit="100")
    assert reply.status == 200, reply.body
    return list(reply.body["data"])


def receipts(bank_or_wallet: BankSandbox | EwalletSandbox, reference: str) -> list[tuple[int | None, Any]]:
    """What the gateway answered to each callback about ``reference`` (status, JSON body)."""
    return [
        (d.status, msgspec.json.decode(d.reply) if d.status == 200 else None)
        for d in bank_or_wallet.callbacks.deliveries
        if reference.encode() in d.body
    ]


async def test_bank_transfer_settles_by_signed_callback(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011112222"))
    assert created.status == 200, created.body
    payment = created.body
    assert (payment["status"], payment["connector"]) == ("processing", "bank_transfer")
    assert payment["connector_reference"].startswith("trf_")
    settled = await wait_for_status(stack.acme, payment["id"], "succeeded")
    assert (settled["amount_captured"], settled["failure"]) == (4200, None)
    assert receipts(stack.bank, payment["connector_reference"]) == [
        (200, {"received": True, "applied": True})
    ]
    assert await settled_by(stack.gw, payment["id"]) == ["payment.callback"]
    assert await ledger_kinds(stack.gw, payment["id"]) == ["payment.collect"]
    assert len(await events(stack.acme, payment["id"], "payment.succeeded")) == 1


async def test_account_without_callback_settles_by_status_poll(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011110005"))
    payment = created.body
    assert payment["status"] == "processing"
    await wait_for_status(stack.acme, payment["id"], "succeeded")
    assert receipts(stack.bank, payment["connector_reference"]) == []
    assert await settled_by(stack.gw, payment["id"]) == ["payment.resolve"]
    assert await ledger_kinds(stack.gw, payment["id"]) == ["payment.collect"]


async def test_rejected_account_fails_at_once(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011110002"))
    assert (created.body["status"], created.body["failure"]["code"]) == ("failed", "bank_rejected")
    assert await ledger_kinds(stack.gw, created.body["id"]) == []


async def test_duplicate_callback_changes_nothing_the_second_time(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011110009"))
    payment = created.body
    await wait_for_status(stack.acme, payment["id"], "succeeded")
    reference = payment["connector_reference"]
    await wait_for_receipts(stack.bank, reference, 2)
    assert receipts(stack.bank, reference) == [
        (200, {"received": True, "applied": True}),
        (200, {"received": True, "applied": False}),
    ]
    assert len(await events(stack.acme, payment["id"], "payment.succeeded")) == 1
    assert await ledger_kinds(stack.gw, payment["id"]) == ["payment.collect"]
    assert (await stack.acme.get(f"/v1/payments/{payment['id']}")).body["amount_captured"] == 4200


async def test_wallet_qr_payment_settles_by_notify(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", wallet("alipay"))
    assert created.status == 200, created.body
    payment = created.body
    assert (payment["status"], payment["connector"]) == ("requires_action", "ewallet")
    assert payment["next_action"]["type"] == "qr_code"
    order = payment["connector_reference"]
    assert payment["next_action"]["data"].endswith(f"/checkout/{order}")
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.wallet.base_url}/simulate/pay/{order}") as paid,
    ):
        assert paid.status == 200
    settled = await wait_for_status(stack.acme, payment["id"], "succeeded")
    assert (settled["amount_captured"], settled["next_action"]) == (990, None)
    assert [status for status, _ in receipts(stack.wallet, order)] == [200]
    assert await ledger_kinds(stack.gw, payment["id"]) == ["payment.collect"]


async def test_paypal_answers_a_redirect(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", wallet("paypal"))
    assert created.body["status"] == "requires_action"
    assert created.body["next_action"] == {
        "type": "redirect",
        "url": f"{stack.wallet.base_url}/checkout/{created.body['connector_reference']}",
    }


async def test_wallet_cancel_closes_the_order(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", wallet("wechat_pay"))
    payment = created.body
    canceled = await stack.acme.post(f"/v1/payments/{payment['id']}/cancel", {})
    assert canceled.status == 200, canceled.body
    assert canceled.body["status"] == "canceled"
    order = stack.wallet.find(payment["connector_reference"])
    assert order is not None and order.status == "closed"
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{stack.wallet.base_url}/simulate/pay/{order.order_id}") as late,
    ):
        assert late.status == 409  # the payer can no longer pay it
    # The closed order can never be paid: its authorization attempt ends with the cancel, so the
    # resolver does not poll it on, and nothing turns the canceled payment into a failed one.
    async with stack.gw.api[DB_POOL].acquire() as conn:
        attempt = await conn.fetchrow(
            "SELECT status, next_check, tries FROM payment_attempts "
            "WHERE payment_id = $1 AND operation = 'authorize'",
            payment["id"],
        )
    assert (attempt["status"], attempt["next_check"]) == ("failed", None)
    await asyncio.sleep(1.5)  # past the resolver's first inquiry of a wallet authorization (1 s)
    async with stack.gw.api[DB_POOL].acquire() as conn:
        tries = await conn.fetchval(
            "SELECT tries FROM payment_attempts WHERE payment_id = $1 AND operation = 'authorize'",
            payment["id"],
        )
    assert tries == attempt["tries"]
    after = await stack.acme.get(f"/v1/payments/{payment['id']}")
    assert (after.body["status"], after.body["failure"]) == ("canceled", None)
    assert await events(stack.acme, payment["id"], "payment.failed") == []
    assert await ledger_kinds(stack.gw, payment["id"]) == []


async def test_fx_rates_fresh_then_stale(settings: Settings) -> None:
    feed = await FxSandbox(settings, port=0).start()
    try:
        async with aiohttp.ClientSession() as session:
            routed = msgspec.structs.replace(settings, sandbox=SandboxSettings(fx=feed.port))
            connector = fx_feed_from_settings(routed, OutboundClient(session, Metrics()))
            fresh = await connector.rates("USD")
            assert fresh.rate("KWD") < 1 < fresh.rate("JPY")
            feed.freeze(age_seconds=120)
            with pytest.raises(StaleRates):
                await connector.rates("USD")
    finally:
        await feed.close()


async def test_message_sink_round_trip(settings: Settings) -> None:
    sink = await MessageSink(settings, port=0).start()
    base = f"http://{sink.host}:{sink.port}"
    try:
        async with aiohttp.ClientSession() as session:
            for body in ("Your code is 123456", "Your code is 654321"):
                message = {"to": "+8613800138000", "channel": "sms", "body": body}
                async with session.post(f"{base}/messages", json=message) as sent:
                    assert sent.status == 201
            async with session.post(
                f"{base}/messages", json={"to": "x", "channel": "fax", "body": ""}
            ) as bad:
                assert bad.status == 400
            async with session.get(f"{base}/messages", params={"to": "+8613800138000"}) as listed:
                messages = await listed.json()
    finally:
        await sink.close()
    assert [m["body"] for m in messages] == ["Your code is 123456", "Your code is 654321"]  # newest last
    assert set(messages[0]) == {"to", "channel", "body", "sent"}
    assert messages[0]["sent"].endswith("Z")


async def test_cancel_of_a_wallet_order_paid_meanwhile_is_refused_and_the_payment_settles(
    stack: Stack,
) -> None:
    created = await stack.acme.post("/v1/payments", wallet("alipay"))
    payment = created.body
    order = stack.wallet.find(payment["connector_reference"])
    assert order is not None
    # The payer has paid but the notify is still on its way (set on the wallet's book directly, so
    # the notify cannot win the race against the cancel): the wallet refuses to close the order.
    order.status, order.paid_at = "paid", time.time()
    canceled = await stack.acme.post(f"/v1/payments/{payment['id']}/cancel", {})
    assert (canceled.status, canceled.body["error"]["code"]) == (409, "payment_cancel_refused")
    for _ in range(50):  # the notify (or the resolver) settles the paid order
        current = (await stack.acme.get(f"/v1/payments/{payment['id']}")).body
        if current["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert current["status"] == "succeeded"
