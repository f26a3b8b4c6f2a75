"""The bank transfer connector against the bank simulator over real sockets (no gateway, no database).

The simulator's callbacks go to a plain-HTTP receiver here, which checks them with the connector's
own ``parse_callback``: the two sides agree on the wire format and the signature.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web

from config.settings import ConnectorSettings, SandboxSettings, ServerSettings, Settings
from connectors.bank_transfer import BankTransferConnector
from connectors.base import (
    CallbackNotice,
    ConnectorUnavailable,
    DuplicateReference,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
)
from connectors.base import PaymentRequest as Request
from connectors.http import OutboundClient
from connectors.registry import ConnectorDeps
from connectors.sandbox.bank import BankSandbox
from gateway.metrics import Metrics
from tests.unit.connectors.peers import StubPeer

SECRET = "whsec_unit_bank"


@dataclass
class Receiver:
    connector: BankTransferConnector | None = None
    notices: list[CallbackNotice] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        assert self.connector is not None
        self.notices.append(self.connector.parse_callback(request.headers, await request.read()))
        self.arrived.set()
        return web.json_response({"received": True})

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.notices) < count:
                self.arrived.clear()
                await self.arrived.wait()


@dataclass
class Env:
    bank: BankSandbox
    connector: BankTransferConnector
    receiver: Receiver
    settings: Settings


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/connectors/bank_transfer/callbacks", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    receiver_port = runner.addresses[0][1]
    config = ConnectorSettings(
        secret=SECRET, options={"callback_base": f"http://127.0.0.1:{receiver_port}"}, read_timeout=2.0
    )
    signing = Settings(
        server=ServerSettings(home=str(tmp_path)),  # no PKI there: plain-HTTP callbacks only
        connectors={"bank_transfer": config},
    )
    bank = await BankSandbox(signing, settle_after=0.05, port=0).start()
    settings = msgspec.structs.replace(signing, sandbox=SandboxSettings(bank=bank.port))
    bank.callbacks.retry_delays = (0.05,)
    async with aiohttp.ClientSession() as session:
        deps = ConnectorDeps(settings, OutboundClient(session, Metrics()), Metrics())
        connector = BankTransferConnector.create("bank_transfer", config, deps)
        receiver.connector = connector
        yield Env(bank, connector, receiver, settings)
    await bank.close()
    await runner.cleanup()


def transfer(attempt: str, account: str = "6222000011112222", amount: int = 4200) -> Request:
    return Request(
        attempt_id=attempt,
        payment_id="pay_" + attempt,
        tenant="acme",
        amount=amount,
        currency="CNY",
        method="bank_transfer",
        details={"account_number": account},
    )


async def test_pending_then_settled_by_signed_callback(env: Env) -> None:
    result = await env.connector.authorize(transfer("att_ok"))
    assert result.outcome is Outcome.PENDING
    assert result.reference is not None and result.reference.startswith("trf_")
    await env.receiver.wait(1)
    [notice] = env.receiver.notices
    assert notice.attempt_id == "att_ok"
    assert (notice.result.outcome, notice.result.reference) == (Outcome.SUCCEEDED, result.reference)
    synced = await env.connector.sync(attempt_id="att_ok", operation="authorize")
    assert synced.outcome is Outcome.SUCCEEDED


async def test_authorize_is_deduplicated_on_the_attempt_id(env: Env) -> None:
    env.bank.settle_after = float("inf")
    first = await env.connector.authorize(transfer("att_dup"))
    again = await env.connector.authorize(transfer("att_dup"))
    assert first == again
    assert len(env.bank.transfers) == 1
    with pytest.raises(DuplicateReference):
        await env.connector.authorize(transfer("att_dup", amount=1))


async def test_test_data_accounts(env: Env) -> None:
    rejected = await env.connector.authorize(transfer("att_0002", "6222000011110002"))
    assert (rejected.outcome, rejected.decline_code) == (Outcome.FAILED, "bank_rejected")
    silent = await env.connector.authorize(transfer("att_0005", "6222000011110005"))
    twice = await env.connector.authorize(transfer("att_0009", "6222000011110009"))
    assert silent.outcome is twice.outcome is Outcome.PENDING
    await env.receiver.wait(2)
    await asyncio.sleep(0.2)  # room for a (wrong) callback about 0005
    assert [n.attempt_id for n in env.receiver.notices] == ["att_0009", "att_0009"]
    polled = await env.connector.sync(attempt_id="att_0005", operation="authorize")
    assert polled.outcome is Outcome.SUCCEEDED
    assert not any(d.body.count(b"att_0002") for d in env.bank.callbacks.deliveries)


async def test_sync_of_an_unknown_attempt_is_a_definite_nothing(env: Env) -> None:
    result = await env.connector.sync(attempt_id="att_never", operation="authorize")
    assert (result.outcome, result.decline_code) == (Outcome.FAILED, "connector_unavailable")


async def test_refunds(env: Env) -> None:
    paid = await env.connector.authorize(transfer("att_r", amount=1000))
    assert paid.reference is not None
    await env.receiver.wait(1)
    refund = await env.connector.refund(
        attempt_id="att_rf1", reference=paid.reference, amount=600, currency="CNY"
    )
    assert refund.outcome is Outcome.SUCCEEDED
    replay = await env.connector.refund(
        attempt_id="att_rf1", reference=paid.reference, amount=600, currency="CNY"
    )
    assert replay == refund  # de-duplicated on the refund attempt id
    too_much = await env.connector.refund(
        attempt_id="att_rf2", reference=paid.reference, amount=500, currency="CNY"
    )
    assert (too_much.outcome, too_much.raw_code) == (Outcome.FAILED, "amount_exceeds_transfer")
    with pytest.raises(InvalidParams):
        await env.connector.capture(attempt_id="att_c", reference=paid.reference, amount=1, currency="CNY")
    with pytest.raises(InvalidParams):
        await env.connector.void(attempt_id="att_v", reference=paid.reference)


async def test_unreachable_bank_is_unavailable_and_nothing_moved(env: Env) -> None:
    await env.bank.close()
    with pytest.raises(ConnectorUnavailable):
        await env.connector.authorize(transfer("att_down"))


async def test_callback_url_defaults_to_the_gateway_listen_port() -> None:
    settings = Settings(server=ServerSettings(listen="127.0.0.1:9443"))
    config = ConnectorSettings(secret=SECRET)
    async with aiohttp.ClientSession() as session:
        deps = ConnectorDeps(settings, OutboundClient(session, Metrics()), Metrics())
        connector = BankTransferConnector.create("bank_transfer", config, deps)
    assert connector.callback_url == "https://localhost:9443/v1/connectors/bank_transfer/callbacks"


# ---- a peer that was reached never means "nothing happened" (issue 9) ---------------------------

# Statuses the bank's API gives no "not accepted" meaning to: the transfer may exist.
UNMAPPED = [204, 401, 403, 404, 408, 429, 500, 503]


@pytest.fixture
async def outbound() -> AsyncIterator[OutboundClient]:
    async with aiohttp.ClientSession() as session:
        yield OutboundClient(session, Metrics())


def bank_at(endpoint: str, http: OutboundClient) -> BankTransferConnector:
    config = ConnectorSettings(
        secret=SECRET,
        endpoint=endpoint,
        options={"callback_base": "http://127.0.0.1:9"},
        connect_timeout=0.3,
        read_timeout=2.0,
    )
    return BankTransferConnector.create("bank_transfer", config, ConnectorDeps(Settings(), http, Metrics()))


@pytest.mark.parametrize("status", UNMAPPED)
async def test_an_unmapped_answer_to_authorize_is_unknown_not_unavailable(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):  # never ConnectorUnavailable: that would route elsewhere
        await bank_at(stub_peer.url, outbound).authorize(transfer("att_unmapped"))
    assert [path for _, path, _ in stub_peer.seen][:1] == ["/transfers"]  # the bank did get it
    assert b"att_unmapped" in stub_peer.seen[0][2]


@pytest.mark.parametrize(
    ("status", "error"), [(400, InvalidParams), (422, InvalidParams), (409, DuplicateReference)]
)
async def test_documented_refusals_of_authorize_stay_definite(
    stub_peer: StubPeer, outbound: OutboundClient, status: int, error: type[Exception]
) -> None:
    stub_peer.status = status
    with pytest.raises(error):
        await bank_at(stub_peer.url, outbound).authorize(transfer("att_refused"))


@pytest.mark.parametrize("status", [204, 401, 403, 408, 429, 500, 503])
async def test_an_unmapped_answer_to_refund_leaves_it_unknown(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    # A "failed" refund frees the amount for another refund: only a documented refusal may do that.
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):
        await bank_at(stub_peer.url, outbound).refund(
            attempt_id="att_rf", reference="trf_1", amount=100, currency="CNY"
        )


@pytest.mark.parametrize("status", [404, 409, 422])
async def test_documented_refund_refusals_stay_refusals(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    stub_peer.status = status
    refused = await bank_at(stub_peer.url, outbound).refund(
        attempt_id="att_rf", reference="trf_1", amount=100, currency="CNY"
    )
    assert (refused.outcome, refused.decline_code) == (Outcome.FAILED, "refund_rejected")


@pytest.mark.parametrize("status", [204, 401, 429, 503])
async def test_an_unmapped_answer_to_a_status_inquiry_is_ask_again(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    # The resolver asks again later on any connector error; never a definite answer from this.
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):
        await bank_at(stub_peer.url, outbound).sync(attempt_id="att_s", operation="authorize")


async def test_a_retry_refused_after_a_try_reached_the_bank_is_still_unknown(
    stub_peer: StubPeer, outbound: OutboundClient
) -> None:
    # The first try got a 503 (the bank may have made the transfer); the retry finds the bank gone.
    # "Cannot connect" on the retry proves nothing about the first try: still unknown.
    stub_peer.status, stub_peer.vanish = 503, True
    with pytest.raises(OutcomeUnknown):
        await bank_at(stub_peer.url, outbound).authorize(transfer("att_gone"))
    assert len(stub_peer.seen) == 1


async def test_refused_connection_is_unavailable(closed_port: int, outbound: OutboundClient) -> None:
    with pytest.raises(ConnectorUnavailable):
        await bank_at(f"http://127.0.0.1:{closed_port}", outbound).authorize(transfer("att_refused_conn"))


async def test_connect_timeout_is_unavailable(unanswered_port: int, outbound: OutboundClient) -> None:
    # The connection never opened, so no byte of the request was written: nothing can have moved.
    with pytest.raises(ConnectorUnavailable):
        await bank_at(f"http://127.0.0.1:{unanswered_port}", outbound).authorize(transfer("att_ct"))
