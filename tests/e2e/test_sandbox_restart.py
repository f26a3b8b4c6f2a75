"""Simulator restarts (issue #16): ``POST /restart`` on the books service, and a real sandbox restart.

First the sandbox runs in-process (:func:`connectors.sandbox.runner.start_sandbox`, every simulator on a
free port) and one simulator at a time is restarted over real sockets: down (refused, open connections
cut), then up on the same port with its records kept or forgotten. Last, the issue's scenario with real
processes: ``payhub sandbox`` is killed (-9) while a bill posting is pending at the utility biller and
started again without its records; the hub posts again under the same reference, once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from config.settings import ConnectorSettings, SandboxSettings, ServerSettings, Settings
from connectors.base import REFERENCE_NOT_FOUND, BillPayment, Outcome
from connectors.http import OutboundClient
from connectors.iso8583_card.transformers import Message, frame_length, pack, unpack
from connectors.registry import ConnectorDeps
from connectors.sandbox.runner import Sandbox, start_sandbox
from connectors.utility_biller import UtilityBillerConnector
from connectors.utility_biller.client import dev_keys
from crypto.pki import PkiPaths
from gateway.metrics import Metrics
from tests.model.harness import Stack
from tests.support.api import Api, api_client, card_payment
from tests.support.processes import SANDBOX_SERVICES, free_port, payhub_env, start_payhub

ACCOUNT = {"account_number": "0031234567"}


@dataclass
class Running:
    ports: SandboxSettings
    http: aiohttp.ClientSession
    utility: UtilityBillerConnector

    def url(self, path: str) -> str:
        return f"{self.ports.url('books')}{path}"

    async def restart(self, service: str, down_for: float, forget: bool) -> tuple[int, Any]:
        body = {"service": service, "down_for": down_for, "forget": forget}
        async with self.http.post(self.url("/restart"), json=body) as reply:
            return reply.status, await reply.json()

    async def state(self, service: str) -> Any:
        async with self.http.get(self.url(f"/restart/{service}")) as reply:
            assert reply.status == 200
            return await reply.json()

    async def books(self) -> Any:
        async with self.http.get(self.url("/books")) as reply:
            assert reply.status == 200
            return await reply.json()

    async def until_up(self, service: str, deadline: float = 5.0) -> None:
        await until(lambda: self._is_up(service), deadline)

    async def _is_up(self, service: str) -> bool:
        return bool((await self.state(service))["up"])

    async def pay_bill(self) -> BillPayment:
        [bill] = await self.utility.fetch_bills("bil_cn_power", ACCOUNT)
        payment = BillPayment(
            attempt_id=f"att_restart_{time.time_ns()}",
            payment_id="pay_restart",
            biller="bil_cn_power",
            customer_params=ACCOUNT,
            amount=bill.amount_due,
            currency="CNY",
            bill_ref=bill.bill_ref,
        )
        assert (await self.utility.pay(payment)).outcome is Outcome.SUCCEEDED
        return payment


async def until(check: Callable[[], Awaitable[bool]], deadline: float) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < deadline, "timed out"
        await asyncio.sleep(0.05)


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def cut(reader: asyncio.StreamReader) -> bool:
    """The peer closed or reset the connection (within a second)."""
    try:
        async with asyncio.timeout(1.0):
            return await reader.read(1) == b""
    except ConnectionError:
        return True


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    dev_keys(tmp_path / "keys")
    ports = SandboxSettings(**{service: free_port() for service in SANDBOX_SERVICES})
    settings = Settings(
        server=ServerSettings(home=str(tmp_path)),  # no PKI there: plain-HTTP callbacks
        sandbox=ports,
        connectors={"utility_biller": ConnectorSettings(read_timeout=1.0)},
    )
    sandbox: Sandbox = await start_sandbox(settings)
    try:
        async with aiohttp.ClientSession() as http:
            metrics = Metrics()
            deps = ConnectorDeps(settings, OutboundClient(http, metrics), metrics)
            utility = UtilityBillerConnector.create(
                "utility_biller", settings.connectors["utility_biller"], deps
            )
            yield Running(ports, http, utility)
    finally:
        await sandbox.close()


async def test_utility_restart_keeps_its_postings(running: Running) -> None:
    kept = await running.pay_bill()
    reader, writer = await asyncio.open_connection("127.0.0.1", running.ports.utility)
    assert (await running.state("utility")) == {"service": "utility", "up": True, "restarts": 0}

    started = time.monotonic()
    assert await running.restart("utility", 1, False) == (
        202,
        {"service": "utility", "down_for": 1.0, "forget": False},
    )
    assert time.monotonic() - started < 0.9  # answered before the simulator came back
    assert await cut(reader)  # the open connection is cut…
    assert await refused(running.ports.utility)  # …and new ones are refused
    assert await running.state("utility") == {"service": "utility", "up": False, "restarts": 1}
    status, body = await running.restart("utility", 1, False)
    assert (status, body["error"]) == (409, "restarting")

    await running.until_up("utility")
    assert time.monotonic() - started >= 1.0
    assert not await refused(running.ports.utility)
    after = await running.utility.status(attempt_id=kept.attempt_id, biller="bil_cn_power")
    assert after.outcome is Outcome.SUCCEEDED  # the biller still knows the posting
    [posting] = (await running.books())["utility"]["postings"]
    assert (posting["reference"], posting["status"]) == (kept.attempt_id, "posted")
    assert await running.state("utility") == {"service": "utility", "up": True, "restarts": 1}
    writer.close()


async def test_utility_restart_that_forgets_loses_its_postings(running: Running) -> None:
    lost = await running.pay_bill()
    assert await running.restart("utility", 1, True) == (
        202,
        {"service": "utility", "down_for": 1.0, "forget": True},
    )
    assert await refused(running.ports.utility)
    assert (await running.books())["utility"] == {"postings": []}  # forgotten at once
    await running.until_up("utility")
    after = await running.utility.status(attempt_id=lost.attempt_id, biller="bil_cn_power")
    assert (after.outcome, after.code) == (Outcome.PENDING, REFERENCE_NOT_FOUND)
    again = await running.pay_bill()  # the biller works on, from an empty book
    postings = (await running.books())["utility"]["postings"]
    assert [p["reference"] for p in postings] == [again.attempt_id]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stan: str) -> Message:
    writer.write(pack({"t": "0800", "7": "0101120000", "11": stan, "70": "301"}))
    await writer.drain()
    prefix = await reader.readexactly(2)
    return unpack(await reader.readexactly(frame_length(prefix)))


async def test_acquirer_restart_cuts_its_iso8583_links(running: Running) -> None:
    port = running.ports.acquirer
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await echo(reader, writer, "000001"))["39"] == "00"
    assert (await running.restart("acquirer", 1, False))[0] == 202
    assert await cut(reader)
    assert await refused(port)
    writer.close()
    await running.until_up("acquirer")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = await echo(reader, writer, "000002")
    assert (answer["t"], answer["11"], answer["39"]) == ("0810", "000002", "00")
    writer.close()
    assert (await running.books())["acquirer"] == {"charges": []}


async def test_bank_restart_that_forgets_cancels_its_settlements(running: Running) -> None:
    """A forgotten transfer neither settles nor calls back later (its timer went with it)."""
    calls: list[bytes] = []

    async def callback(request: web.Request) -> web.Response:
        calls.append(await request.read())
        return web.json_response({"received": True})

    app = web.Application()
    app.router.add_post("/callback", callback)
    receiver = web.AppRunner(app)
    await receiver.setup()
    await web.TCPSite(receiver, "127.0.0.1", 0).start()
    transfer = {
        "reference": "att_restart_bank",
        "account_number": "6222000011112222",  # settles after 1 s and calls back
        "amount": 1000,
        "currency": "CNY",
        "callback_url": f"http://127.0.0.1:{receiver.addresses[0][1]}/callback",
    }
    try:
        async with running.http.post(f"{running.ports.url('bank')}/transfers", json=transfer) as reply:
            assert reply.status == 202
        assert (await running.restart("bank", 0, True))[0] == 202
        await running.until_up("bank")
        await asyncio.sleep(1.5)  # past the settlement the bank had scheduled
        assert calls == []
        assert (await running.books())["bank"] == {"transfers": []}
    finally:
        await receiver.cleanup()


@pytest.mark.parametrize(
    "body",
    [
        {"service": "nowhere", "down_for": 1, "forget": False},
        {"service": "books", "down_for": 1, "forget": False},
        {"service": "utility", "down_for": -1, "forget": False},
        {"service": "utility", "down_for": 61, "forget": False},
        {"service": "utility", "down_for": "1", "forget": False},
        {"service": "utility", "down_for": 1, "forget": "yes"},
        {"service": "utility", "down_for": 1},
    ],
)
async def test_restart_refuses_bad_requests(running: Running, body: dict[str, Any]) -> None:
    async with running.http.post(running.url("/restart"), json=body) as reply:
        assert reply.status == 400
        answer = await reply.json()
    assert answer["error"] == "invalid_request" and answer["message"]
    async with running.http.get(running.url("/restart/nowhere")) as reply:
        assert reply.status == 404
    assert await running.state("utility") == {"service": "utility", "up": True, "restarts": 0}


# ---- the scenario, with real processes ------------------------------------------------

PENDING_ACCOUNT = "0031267777"  # posted, but answered only after the connector's read time-out
SANDBOX_DOWN = 8.0
POSTED_WITHIN = 90.0


async def books_answer(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url) as reply:
            return reply.status == 200
    except aiohttp.ClientError:
        return False


async def payment_until(acme: Api, payment_id: str, done: Callable[[Any], bool], deadline: float) -> Any:
    started = time.monotonic()
    while True:
        reply = await acme.get(f"/v1/payments/{payment_id}")
        assert reply.status == 200, reply.body
        if done(reply.body) or time.monotonic() - started > deadline:
            return reply.body
        await asyncio.sleep(0.5)


async def test_posting_lost_in_a_sandbox_crash_is_posted_again_once(
    payhub_home: Path, pki: PkiPaths, db_url: str, tmp_path: Path
) -> None:
    stack = Stack(payhub_home, db_url, tmp_path)
    books_url = f"http://127.0.0.1:{stack.ports['books']}/books"
    try:
        await stack.start()
        async with api_client(pki, "acme", stack.api_port) as acme, aiohttp.ClientSession() as http:
            params = {"account_number": PENDING_ACCOUNT}
            fetched = await acme.post(
                "/v1/bills/fetch", {"biller": "bil_cn_power", "customer_params": params}, key=None
            )
            assert fetched.status == 200, fetched.body
            [bill] = fetched.body["data"]
            body = card_payment(amount=bill["amount_due"])
            body["bill"] = {"biller": "bil_cn_power", "customer_params": params, "bill_ref": bill["bill_ref"]}
            paid = await acme.post("/v1/payments", body)
            assert paid.status == 200, paid.body
            payment = await payment_until(
                acme, paid.body["id"], lambda p: p["bill_posting"]["status"] != "posting", 30
            )
            posting = payment["bill_posting"]["status"]
            assert (payment["status"], posting) == ("processing", "pending"), payment

            assert stack.sandbox is not None
            os.kill(stack.sandbox.pid, signal.SIGKILL)  # every book is lost with the process
            stack.sandbox.wait(timeout=10)
            await asyncio.sleep(SANDBOX_DOWN)
            env = payhub_env(PAYHUB_CONFIG=str(stack.config), PAYHUB_HOME=str(payhub_home))
            stack.sandbox = start_payhub("sandbox", env=env, stdout=tmp_path / "sandbox-2.log")
            await until(lambda: books_answer(http, books_url), 30)

            payment = await payment_until(
                acme, payment["id"], lambda p: p["status"] != "processing", POSTED_WITHIN
            )
            conn = await asyncpg.connect(db_url)
            try:
                posts = await conn.fetch(
                    "SELECT id, status FROM payment_attempts "
                    "WHERE payment_id = $1 AND operation = 'post_bill'",
                    payment["id"],
                )
            finally:
                await conn.close()
            async with http.get(books_url) as reply:
                postings = (await reply.json())["utility"]["postings"]
    finally:
        stack.stop()
    log = [
        line
        for line in (tmp_path / f"gateway-{stack.incarnation}.log").read_text().splitlines()
        if "bill." in line or "resolver" in line
    ]
    assert (payment["status"], payment["bill_posting"]["status"]) == ("succeeded", "posted"), (payment, log)
    [(reference, status)] = [(p["id"], p["status"]) for p in posts]  # one post attempt, one reference
    assert status == "succeeded"
    mine = [p for p in postings if p["reference"] == reference]
    assert [(p["status"], p["posted"]) for p in mine] == [("posted", bill["amount_due"])], postings
    assert len(postings) == 1  # the new sandbox saw that posting only, once
