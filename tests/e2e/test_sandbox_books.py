"""The simulators' books (``GET /book`` on each HTTP simulator, ``GET /books`` on the books service).

Money is moved through the real connector clients over real sockets (ISO 8583 over TCP to the acquirer,
signed HTTP to the billers, JSON to the bank and the wallet); then the books must say what each side
charged, refunded, posted and reversed, by reference. Last, ``payhub sandbox`` as a process.
"""

from __future__ import annotations

import asyncio
import math
import signal
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web

from config.settings import ConnectorSettings, SandboxService, SandboxSettings, ServerSettings, Settings
from connectors.bank_transfer import BankTransferConnector
from connectors.base import BillPayment, Outcome, PaymentRequest
from connectors.ewallet import EwalletConnector
from connectors.http import OutboundClient
from connectors.iso8583_card import transformers as wire
from connectors.iso8583_card.client import Iso8583CardConnector
from connectors.registry import ConnectorDeps
from connectors.sandbox import telecom as telecom_sandbox
from connectors.sandbox import utility as utility_sandbox
from connectors.sandbox.acquirer import AcquirerSimulator
from connectors.sandbox.bank import BankSandbox
from connectors.sandbox.books import BooksService
from connectors.sandbox.common import HttpSimulator, Simulator
from connectors.sandbox.ewallet import EwalletSandbox
from connectors.telecom_topup import TelecomTopupConnector
from connectors.utility_biller import UtilityBillerConnector
from connectors.utility_biller.client import dev_keys
from gateway.metrics import Metrics
from tests.support.acquirer import card_connector, card_request
from tests.support.processes import config_with_free_sandbox_ports, payhub_env, start_payhub

BANK_SECRET = "whsec_books_bank"
WALLET_SECRET = "whsec_books_wallet"
TELECOM_SECRET = "books-telecom-secret"


def port_of(simulator: HttpSimulator) -> int:
    return int(simulator.runner.addresses[0][1])


@dataclass
class Books:
    acquirer: AcquirerSimulator
    bank: BankSandbox
    wallet: EwalletSandbox
    utility: utility_sandbox.UtilityState
    telecom: telecom_sandbox.TelecomState
    urls: dict[str, str]  # service → base URL of its own port
    books_url: str
    card: Iso8583CardConnector
    bank_connector: BankTransferConnector
    wallet_connector: EwalletConnector
    utility_connector: UtilityBillerConnector
    telecom_connector: TelecomTopupConnector
    http: aiohttp.ClientSession

    async def get(self, url: str) -> Any:
        async with self.http.get(url) as reply:
            assert reply.status == 200, await reply.text()
            assert reply.content_type == "application/json"
            return await reply.json()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("books")
    dev_keys(path / "keys")  # once per module: RSA key generation is the slow part
    return path


async def receiver() -> web.AppRunner:
    """Takes the bank's and the wallet's callbacks (no gateway here) and says thank you."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post("/{tail:.*}", ok)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


@pytest.fixture
async def books(home: Path) -> AsyncIterator[Books]:
    callbacks = await receiver()
    base = f"http://127.0.0.1:{callbacks.addresses[0][1]}"
    connectors = {
        "bank_transfer": ConnectorSettings(secret=BANK_SECRET, options={"callback_base": base}),
        "ewallet": ConnectorSettings(secret=WALLET_SECRET, options={"callback_base": base}),
        "utility_biller": ConnectorSettings(read_timeout=1.0),
        "telecom_topup": ConnectorSettings(secret=TELECOM_SECRET),
    }
    settings = Settings(
        server=ServerSettings(home=str(home)),  # no PKI there: plain-HTTP callbacks
        sandbox=SandboxSettings(utility=0, telecom=0),
        connectors=connectors,
    )
    acquirer = AcquirerSimulator("127.0.0.1", 0)
    await acquirer.open()
    utility = await utility_sandbox.start(settings)
    telecom = await telecom_sandbox.start(settings)
    bank = await BankSandbox(settings, settle_after=math.inf, port=0).start()
    wallet = await EwalletSandbox(settings, pay_after=None, port=0).start()
    simulators: dict[SandboxService, Simulator] = {
        "acquirer": acquirer,
        "utility": utility,
        "telecom": telecom,
        "bank": bank,
        "ewallet": wallet,
    }
    service = await BooksService(settings, simulators, port=0).start()
    ports = SandboxSettings(
        acquirer=acquirer.port,
        utility=port_of(utility),
        telecom=port_of(telecom),
        bank=bank.port,
        ewallet=wallet.port,
        books=service.port,
    )
    settings = msgspec.structs.replace(settings, sandbox=ports)
    try:
        async with aiohttp.ClientSession() as http, card_connector(acquirer.port) as card:
            metrics = Metrics()
            deps = ConnectorDeps(settings, OutboundClient(http, metrics), metrics)
            yield Books(
                acquirer=acquirer,
                bank=bank,
                wallet=wallet,
                utility=utility.runner.app[utility_sandbox.UTILITY_STATE],
                telecom=telecom.runner.app[telecom_sandbox.TELECOM_STATE],
                urls={name: ports.url(name) for name in ("utility", "telecom", "bank", "ewallet")},
                books_url=f"{ports.url('books')}/books",
                card=card,
                bank_connector=BankTransferConnector.create(
                    "bank_transfer", connectors["bank_transfer"], deps
                ),
                wallet_connector=EwalletConnector.create("ewallet", connectors["ewallet"], deps),
                utility_connector=UtilityBillerConnector.create(
                    "utility_biller", connectors["utility_biller"], deps
                ),
                telecom_connector=TelecomTopupConnector.create(
                    "telecom_topup", connectors["telecom_topup"], deps
                ),
                http=http,
            )
    finally:
        await service.close()
        await wallet.close()
        await bank.close()
        await telecom.close()
        await utility.close()
        await acquirer.close()
        await callbacks.cleanup()


_counter = iter(range(1, 1_000_000))


def attempt(prefix: str = "att") -> str:
    return f"{prefix}_{time.time_ns()}{next(_counter)}"


def payment(method: str, amount: int, **details: str) -> PaymentRequest:
    attempt_id = attempt()
    return PaymentRequest(
        attempt_id=attempt_id,
        payment_id="pay_" + attempt_id,
        tenant="acme",
        amount=amount,
        currency="CNY",
        method=method,
        details=details,
    )


def bill(biller: str, params: dict[str, str], amount: int, currency: str = "CNY", **kw: str) -> BillPayment:
    return BillPayment(
        attempt_id=attempt(),
        payment_id="pay_bill",
        biller=biller,
        customer_params=params,
        amount=amount,
        currency=currency,
        bill_ref=kw.get("bill_ref"),
    )


async def until(check: Any, deadline: float = 5.0) -> None:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < deadline, "timed out"
        await asyncio.sleep(0.02)


def by(entries: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {entry[key]: entry for entry in entries}


# ---- the acquirer (only reachable through /books) -----------------------------------------------


async def test_acquirer_book_lists_charges_refunds_reversals_and_declines(books: Books) -> None:
    paid = await books.card.authorize(card_request("att_buy", amount=12850))
    assert paid.outcome is Outcome.SUCCEEDED and paid.reference is not None
    refund = await books.card.refund(
        attempt_id="att_rf", reference=paid.reference, amount=3000, currency="CNY"
    )
    assert refund.outcome is Outcome.SUCCEEDED
    held = await books.card.authorize(card_request("att_hold", amount=5000, capture=False))
    assert held.reference is not None
    assert (
        await books.card.void(attempt_id="att_void", reference=held.reference)
    ).outcome is Outcome.SUCCEEDED
    auth = await books.card.authorize(card_request("att_auth", amount=7000, capture=False))
    assert auth.reference is not None
    captured = await books.card.capture(
        attempt_id="att_cap", reference=auth.reference, amount=6000, currency="CNY"
    )
    assert captured.outcome is Outcome.SUCCEEDED
    declined = await books.card.authorize(card_request("att_no", "4000000000000002", amount=100))
    assert declined.outcome is Outcome.FAILED

    charges = (await books.get(books.books_url))["acquirer"]["charges"]
    buy, rfd, hold, auth_rrn, no = (
        wire.rrn_for(a) for a in ("att_buy", "att_rf", "att_hold", "att_auth", "att_no")
    )
    assert [c["rrn"] for c in charges] == [buy, rfd, hold, auth_rrn, no]  # in the order they arrived
    assert charges[0] == {
        "rrn": buy,
        "kind": "purchase",
        "currency": "CNY",
        "amount": 12850,
        "authorized": 12850,
        "captured": 12850,
        "refunded": 3000,
        "reversed": False,
        "status": "captured",
        "original_rrn": None,
        "charged": 9850,
    }
    assert charges[1] == {
        "rrn": rfd,
        "kind": "refund",
        "currency": "CNY",
        "amount": 3000,
        "authorized": 0,
        "captured": 0,
        "refunded": 0,
        "reversed": False,
        "status": "refunded",
        "original_rrn": buy,
        "charged": 0,
    }
    assert (charges[2]["kind"], charges[2]["status"], charges[2]["reversed"], charges[2]["charged"]) == (
        "authorization",
        "reversed",
        True,
        0,
    )
    assert (
        charges[3]["status"],
        charges[3]["authorized"],
        charges[3]["captured"],
        charges[3]["charged"],
    ) == (
        "captured",
        7000,
        6000,
        6000,
    )
    assert (charges[4]["status"], charges[4]["authorized"], charges[4]["charged"]) == ("declined", 0, 0)
    assert sum(c["charged"] for c in charges) == 9850 + 6000


# ---- bank and wallet ----------------------------------------------------------------------------


async def test_bank_book_has_transfers_and_their_refunds(books: Books) -> None:
    settled = payment("bank_transfer", 1000, account_number="6222000011112222")
    opened = await books.bank_connector.authorize(settled)
    assert opened.outcome is Outcome.PENDING and opened.reference is not None
    pending = payment("bank_transfer", 700, account_number="6222000011113333")
    await books.bank_connector.authorize(pending)
    rejected = payment("bank_transfer", 500, account_number="6222000011110002")
    assert (await books.bank_connector.authorize(rejected)).outcome is Outcome.FAILED

    before = by((await books.get(f"{books.urls['bank']}/book"))["transfers"], "reference")
    assert before[settled.attempt_id]["charged"] == 0  # not settled yet: nothing taken

    transfer = books.bank.find(settled.attempt_id)
    assert transfer is not None
    await books.bank.settle(transfer)
    refund = await books.bank_connector.refund(
        attempt_id="att_bank_rf", reference=opened.reference, amount=600, currency="CNY"
    )
    assert refund.outcome is Outcome.SUCCEEDED

    book = await books.get(f"{books.urls['bank']}/book")
    assert list(book) == ["transfers"]
    assert [t["reference"] for t in book["transfers"]] == [
        settled.attempt_id,
        pending.attempt_id,
        rejected.attempt_id,
    ]
    [refund_made] = transfer.refunds.values()
    assert book["transfers"][0] == {
        "reference": settled.attempt_id,
        "transfer_id": opened.reference,
        "currency": "CNY",
        "amount": 1000,
        "status": "settled",
        "refunded": 600,
        "refunds": [
            {
                "refund_reference": "att_bank_rf",
                "refund_id": refund_made.refund_id,
                "amount": 600,
                "status": "succeeded",
            }
        ],
        "charged": 400,
    }
    assert (book["transfers"][1]["status"], book["transfers"][1]["charged"]) == ("pending", 0)
    assert (book["transfers"][2]["status"], book["transfers"][2]["charged"]) == ("rejected", 0)
    assert (await books.get(books.books_url))["bank"] == book


async def test_wallet_book_has_orders_and_their_refunds(books: Books) -> None:
    paid = payment("wallet", 990, provider="alipay")
    opened = await books.wallet_connector.authorize(paid)
    assert opened.outcome is Outcome.REQUIRES_ACTION and opened.reference is not None
    unpaid = payment("wallet", 500, provider="paypal")
    await books.wallet_connector.authorize(unpaid)
    async with books.http.post(f"{books.urls['ewallet']}/simulate/pay/{opened.reference}") as reply:
        assert reply.status == 200
    refund = await books.wallet_connector.refund(
        attempt_id="att_wallet_rf", reference=opened.reference, amount=400, currency="CNY"
    )
    assert refund.outcome is Outcome.SUCCEEDED

    book = await books.get(f"{books.urls['ewallet']}/book")
    orders = book["orders"]
    assert [o["reference"] for o in orders] == [paid.attempt_id, unpaid.attempt_id]
    first = orders[0]
    assert {k: v for k, v in first.items() if k != "refunds"} == {
        "reference": paid.attempt_id,
        "order_id": opened.reference,
        "currency": "CNY",
        "amount": 990,
        "status": "paid",
        "refunded": 400,
        "charged": 590,
    }
    [made] = first["refunds"]
    assert (made["refund_reference"], made["amount"], made["status"]) == ("att_wallet_rf", 400, "succeeded")
    assert made["refund_id"].startswith("wrf_")
    assert (orders[1]["status"], orders[1]["charged"], orders[1]["refunds"]) == ("unpaid", 0, [])
    assert (await books.get(books.books_url))["ewallet"] == book


# ---- billers ------------------------------------------------------------------------------------


async def test_utility_book_has_postings_reversals_rejections_and_tombstones(books: Books) -> None:
    connector = books.utility_connector
    account = {"account_number": "0031234567"}
    [power] = await connector.fetch_bills("bil_cn_power", account)
    kept = bill("bil_cn_power", account, power.amount_due, bill_ref=power.bill_ref)
    assert (await connector.pay(kept)).outcome is Outcome.SUCCEEDED
    [usd] = await connector.fetch_bills("bil_us_power", account)
    dollars = bill("bil_us_power", account, usd.amount_due, "USD", bill_ref=usd.bill_ref)
    assert (await connector.pay(dollars)).outcome is Outcome.SUCCEEDED
    undone = bill("bil_cn_creditcard", account, 2500)
    assert (await connector.pay(undone)).outcome is Outcome.SUCCEEDED
    await connector.reverse(attempt_id=undone.attempt_id, biller="bil_cn_creditcard")
    no_account = {"account_number": "0031239999"}
    [gas] = await connector.fetch_bills("bil_cn_gas", no_account)
    refused = bill("bil_cn_gas", no_account, gas.amount_due, bill_ref=gas.bill_ref)
    assert (await connector.pay(refused)).code == "biller_rejected"
    never_paid = attempt()
    await connector.reverse(attempt_id=never_paid, biller="bil_cn_water")

    book = await books.get(f"{books.urls['utility']}/book")
    assert list(book) == ["postings"]
    postings = book["postings"]
    assert [p["reference"] for p in postings] == [
        kept.attempt_id,
        dollars.attempt_id,
        undone.attempt_id,
        refused.attempt_id,
        never_paid,
    ]
    assert postings[0] == {
        "reference": kept.attempt_id,
        "biller": "bil_cn_power",
        "account": "0031234567",
        "amount": power.amount_due,
        "currency": "CNY",
        "status": "posted",
        "posted": power.amount_due,
    }
    assert (postings[1]["biller"], postings[1]["currency"], postings[1]["posted"]) == (
        "bil_us_power",
        "USD",
        usd.amount_due,
    )
    assert (postings[2]["status"], postings[2]["amount"], postings[2]["posted"]) == ("reversed", 2500, 0)
    assert (postings[3]["biller"], postings[3]["status"], postings[3]["posted"]) == (
        "bil_cn_gas",
        "rejected",
        0,
    )
    assert postings[4] == {
        "reference": never_paid,
        "biller": "bil_cn_water",
        "account": "",
        "amount": 0,
        "currency": "CNY",
        "status": "reversed",
        "posted": 0,
    }
    assert (await books.get(books.books_url))["utility"] == book


async def test_telecom_book_has_topups_pending_posted_and_rejected(books: Books) -> None:
    connector = books.telecom_connector
    done = bill("bil_cn_mobile", {"msisdn": "+8613800138000"}, 3000)
    assert (await connector.pay(done)).outcome is Outcome.SUCCEEDED
    books.telecom.async_completion = 0.3
    slow = bill("bil_cn_mobile", {"msisdn": "+8613800137777"}, 1000)
    assert (await connector.pay(slow)).outcome is Outcome.PENDING
    books.telecom.reject_msisdns.add("+8613900001111")
    refused = bill("bil_cn_mobile", {"msisdn": "+8613900001111"}, 1000)
    assert (await connector.pay(refused)).code == "biller_rejected"

    topups = (await books.get(f"{books.urls['telecom']}/book"))["topups"]
    assert [t["reference"] for t in topups] == [done.attempt_id, slow.attempt_id, refused.attempt_id]
    assert topups[0] == {
        "reference": done.attempt_id,
        "biller": "bil_cn_mobile",
        "msisdn": "+8613800138000",
        "amount": 3000,
        "currency": "CNY",
        "status": "posted",
        "posted": 3000,
    }
    assert (topups[1]["status"], topups[1]["posted"]) == ("pending", 0)
    assert (topups[2]["status"], topups[2]["posted"]) == ("rejected", 0)
    await asyncio.sleep(0.35)  # the aggregator completes the slow one
    later = (await books.get(books.books_url))["telecom"]["topups"]
    assert (later[1]["status"], later[1]["posted"]) == ("posted", 1000)


# ---- the whole --------------------------------------------------------------------------------


async def test_books_aggregate_every_simulator_and_ignore_the_fault_knobs(books: Books) -> None:
    empty = await books.get(books.books_url)
    assert empty == {
        "acquirer": {"charges": []},
        "bank": {"transfers": []},
        "ewallet": {"orders": []},
        "utility": {"postings": []},
        "telecom": {"topups": []},
    }
    for service in ("utility", "telecom", "bank", "ewallet"):
        async with books.http.post(f"{books.urls[service]}/faults", json={"error_rate": 1.0}) as reply:
            assert reply.status == 200
        async with books.http.get(f"{books.urls[service]}/nothing-here") as reply:
            assert reply.status == 503  # the knob is on
        assert await books.get(f"{books.urls[service]}/book")  # …but not for the book
    assert await books.get(books.books_url) == empty


async def test_payhub_sandbox_process_answers_books(payhub_home: Path, tmp_path: Path) -> None:
    config = config_with_free_sandbox_ports(tmp_path)
    ports = tomllib.loads(config.read_text())["sandbox"]
    assert ports["books"] != 9708  # rewritten to a free port like the others
    env = payhub_env(PAYHUB_HOME=str(payhub_home), PAYHUB_CONFIG=str(config))
    sandbox = start_payhub("sandbox", env=env, stdout=tmp_path / "sandbox.log")
    url = f"http://127.0.0.1:{ports['books']}/books"
    try:
        async with aiohttp.ClientSession() as http:
            started = time.monotonic()
            while True:
                try:
                    async with http.get(url) as reply:
                        if reply.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert sandbox.poll() is None, (tmp_path / "sandbox.err").read_text()
                assert time.monotonic() - started < 30, "payhub sandbox never answered /books"
                await asyncio.sleep(0.1)
            transfer = {
                "reference": "att_process_1",
                "account_number": "6222000011110002",  # rejected at once: no callback to send
                "amount": 4200,
                "currency": "CNY",
                "callback_url": "http://127.0.0.1:9/unused",
            }
            async with http.post(f"http://127.0.0.1:{ports['bank']}/transfers", json=transfer) as reply:
                assert reply.status == 200
            async with http.get(url) as reply:
                assert reply.status == 200
                body = await reply.json()
    finally:
        sandbox.send_signal(signal.SIGTERM)
        sandbox.wait(timeout=20)
    assert set(body) == {"acquirer", "bank", "ewallet", "utility", "telecom"}
    assert body["acquirer"] == {"charges": []}
    [booked] = body["bank"]["transfers"]
    assert (booked["reference"], booked["status"], booked["amount"], booked["charged"]) == (
        "att_process_1",
        "rejected",
        4200,
        0,
    )
    assert "Traceback" not in (tmp_path / "sandbox.err").read_text()
