"""``POST /v1/connectors/{name}/callbacks`` over real mTLS: only a valid signature changes anything.

A bank transfer is held pending (the bank simulator's settlement is switched off), then forged,
tampered, replayed, misdirected and out-of-order notices are posted straight to the gateway. Each
must leave the payment, its events and the ledger exactly as they were.
"""

from __future__ import annotations

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
from connectors.sandbox.bank import BankSandbox
from crypto.pki import PkiPaths
from crypto.signatures import sign_webhook
from gateway.api.callbacks import MAX_CALLBACK_BYTES
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.support.api import Api, api_client
from tests.support.mtls import client_context, gateway

BANK_SECRET = "whsec_e2e_callbacks_bank"
WALLET_SECRET = "whsec_e2e_callbacks_wallet"
BANK_PATH = "/v1/connectors/bank_transfer/callbacks"


def listen_port() -> int:
    """A free port below the ephemeral range, so no outgoing connection takes it before we bind it."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


@dataclass
class Stack:
    gw: RunningGateway
    acme: Api
    bank: BankSandbox
    sender: aiohttp.ClientSession  # mTLS with the sandbox's client certificate

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        url = f"https://localhost:{self.gw.api_port}{path}"
        async with self.sender.post(url, data=body, headers=headers) as reply:
            return reply.status, await reply.json()


@pytest.fixture
async def stack(settings: Settings, pki: PkiPaths) -> AsyncIterator[Stack]:
    signing = msgspec.structs.replace(
        settings, connectors={**settings.connectors, "bank_transfer": ConnectorSettings(secret=BANK_SECRET)}
    )
    bank = await BankSandbox(signing, settle_after=float("inf"), port=0).start()  # held pending
    api_port = listen_port()
    options = {"callback_base": f"https://localhost:{api_port}"}
    routed = msgspec.structs.replace(
        settings,
        server=msgspec.structs.replace(settings.server, listen=f"127.0.0.1:{api_port}"),
        sandbox=SandboxSettings(bank=bank.port, ewallet=listen_port()),
        connectors={
            **settings.connectors,
            "bank_transfer": ConnectorSettings(secret=BANK_SECRET, options=options),
            "ewallet": ConnectorSettings(secret=WALLET_SECRET, options=options),
        },
        routing=msgspec.structs.replace(settings.routing, bank_transfer=["bank_transfer"]),
    )
    sender = aiohttp.TCPConnector(ssl=client_context(pki, "sandbox"))  # issued by the bank simulator
    try:
        async with (
            gateway(routed) as gw,
            api_client(pki, "acme", gw.api_port) as acme,
            aiohttp.ClientSession(connector=sender) as session,
        ):
            yield Stack(gw, acme, bank, session)
    finally:
        await bank.close()


async def pending_transfer(stack: Stack) -> dict[str, Any]:
    created = await stack.acme.post(
        "/v1/payments",
        {
            "amount": 7700,
            "currency": "CNY",
            "payment_method": {
                "type": "bank_transfer",
                "bank_transfer": {"account_number": "6222000099991234"},
            },
        },
    )
    assert created.status == 200, created.body
    assert created.body["status"] == "processing"
    return dict(created.body)


async def attempt_of(stack: Stack, payment_id: str) -> str:
    async with stack.gw.api[DB_POOL].acquire() as conn:
        attempt: str = await conn.fetchval(
            "SELECT id FROM payment_attempts WHERE payment_id = $1 AND operation = 'authorize'", payment_id
        )
    return attempt


async def state(stack: Stack, payment_id: str) -> tuple[Any, ...]:
    """Everything a notice could change: the payment, its events, its ledger transactions."""
    payment = (await stack.acme.get(f"/v1/payments/{payment_id}")).body
    events = (await stack.acme.get("/v1/events", object=payment_id, limit="100")).body["data"]
    async with stack.gw.api[DB_POOL].acquire() as conn:
        ledger = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE payment_id = $1", payment_id
        )
    return payment, [e["id"] for e in events], ledger


def notice(attempt: str, transfer: str, status: str = "settled") -> bytes:
    return msgspec.json.encode({"reference": attempt, "status": status, "transfer_id": transfer})


def signed(body: bytes, secret: str = BANK_SECRET, **kwargs: int) -> dict[str, str]:
    return {"Content-Type": "application/json", "Bank-Signature": sign_webhook(body, [secret], **kwargs)}


async def test_forged_tampered_and_replayed_notices_change_nothing(stack: Stack) -> None:
    payment = await pending_transfer(stack)
    attempt = await attempt_of(stack, payment["id"])
    genuine = notice(attempt, payment["connector_reference"])
    before = await state(stack, payment["id"])
    old = int(time.time()) - 3600
    attempts = {
        "wrong secret": (genuine, signed(genuine, "whsec_guessed")),
        "tampered body": (notice(attempt, payment["connector_reference"], "rejected"), signed(genuine)),
        "no signature": (genuine, {"Content-Type": "application/json"}),
        "garbled signature": (genuine, {"Bank-Signature": "t=1,v1=zz"}),
        "replayed an hour later": (genuine, signed(genuine, timestamp=old)),
        "signed for the wallet": (
            genuine,
            {"Bank-Signature": signed(genuine, WALLET_SECRET)["Bank-Signature"]},
        ),
    }
    for what, (body, headers) in attempts.items():
        status, reply = await stack.post(BANK_PATH, body, headers)
        assert status == 400, (what, reply)
        assert (reply["error"]["type"], reply["error"]["code"]) == (
            "invalid_request_error",
            "signature_invalid",
        )
    # A bank notice signed with the bank's secret means nothing at the wallet's callback route.
    status, reply = await stack.post("/v1/connectors/ewallet/callbacks", genuine, signed(genuine))
    assert (status, reply["error"]["code"]) == (400, "signature_invalid")
    assert await state(stack, payment["id"]) == before

    status, reply = await stack.post(BANK_PATH, genuine, signed(genuine))  # the real one still works
    assert (status, reply) == (200, {"received": True, "applied": True})
    assert (await stack.acme.get(f"/v1/payments/{payment['id']}")).body["status"] == "succeeded"


async def test_out_of_order_and_late_notices_change_nothing(stack: Stack) -> None:
    payment = await pending_transfer(stack)
    reference = payment["connector_reference"]
    transfer = stack.bank.find(reference)
    assert transfer is not None
    await stack.bank.settle(transfer)  # settles and sends the signed "settled" callback
    settled = await state(stack, payment["id"])
    assert settled[0]["status"] == "succeeded"
    assert settled[2] == 1
    for status in ("pending", "rejected", "settled"):  # after the fact, in the wrong order, again
        delivery = await stack.bank.notify(reference, status)
        assert delivery.status == 200
        assert msgspec.json.decode(delivery.reply) == {"received": True, "applied": False}, status
    assert await state(stack, payment["id"]) == settled


async def test_a_pending_notice_is_received_but_applies_nothing(stack: Stack) -> None:
    payment = await pending_transfer(stack)
    before = await state(stack, payment["id"])
    delivery = await stack.bank.notify(payment["connector_reference"], "pending")
    assert (delivery.status, msgspec.json.decode(delivery.reply)) == (
        200,
        {"received": True, "applied": False},
    )
    assert await state(stack, payment["id"]) == before


async def test_unknown_attempts_connectors_and_oversized_bodies(stack: Stack) -> None:
    body = notice("att_doesnotexist", "trf_x")
    assert await stack.post(BANK_PATH, body, signed(body)) == (200, {"received": True, "applied": False})
    status, reply = await stack.post("/v1/connectors/nosuchbank/callbacks", body, signed(body))
    assert (status, reply["error"]["code"]) == (404, "resource_missing")
    # Well-formed JSON (the gateway's own input limits let it through), just far bigger than a notice.
    huge = msgspec.json.encode({"reference": "att_x", "padding": ["x" * 100] * (MAX_CALLBACK_BYTES // 100)})
    status, reply = await stack.post(BANK_PATH, huge, signed(huge))
    assert (status, reply["error"]["code"]) == (413, "request_too_large")


async def test_callbacks_need_a_client_certificate_at_the_handshake(stack: Stack, pki: PkiPaths) -> None:
    body = notice("att_x", "trf_x")
    no_cert = aiohttp.TCPConnector(ssl=client_context(pki, None))
    async with aiohttp.ClientSession(connector=no_cert) as session:
        with pytest.raises((aiohttp.ClientError, OSError)):
            url = f"https://localhost:{stack.gw.api_port}{BANK_PATH}"
            async with session.post(url, data=body, headers=signed(body)) as reply:
                await reply.read()
    # Any certificate from the payhub CA gets through the handshake; the signature decides the rest.
    async with api_client(pki, "globex", stack.gw.api_port) as globex:
        refused = await globex.request("POST", BANK_PATH, {"reference": "att_x"})
        assert (refused.status, refused.body["error"]["code"]) == (400, "signature_invalid")


async def test_an_underpaid_or_other_currency_notice_settles_nothing(stack: Stack) -> None:
    payment = await pending_transfer(stack)
    attempt = await attempt_of(stack, payment["id"])
    before = await state(stack, payment["id"])
    transfer = payment["connector_reference"]
    wrong = {
        "underpaid": {"amount": 100, "currency": "CNY"},
        "other currency": {"amount": 7700, "currency": "USD"},
    }
    for what, money in wrong.items():
        body = msgspec.json.encode(
            {"reference": attempt, "status": "settled", "transfer_id": transfer} | money
        )
        status, reply = await stack.post(BANK_PATH, body, signed(body))
        assert (status, reply["error"]["code"]) == (400, "callback_mismatch"), what
        assert await state(stack, payment["id"]) == before, what
    right = msgspec.json.encode(
        {
            "reference": attempt,
            "status": "settled",
            "transfer_id": transfer,
            "amount": 7700,
            "currency": "CNY",
        }
    )
    status, reply = await stack.post(BANK_PATH, right, signed(right))
    assert (status, reply["applied"]) == (200, True)
    settled = (await stack.acme.get(f"/v1/payments/{payment['id']}")).body
    assert (settled["status"], settled["amount_captured"]) == ("succeeded", 7700)
