"""Flows in combination, and interrupted ones: each test is a bug the flows had (issue "Money on one
path"), over real mTLS and PostgreSQL, against the in-process connector and the utility biller.

An interruption is a connector call that raises something unexpected once (a stand-in for a
crash, a database time-out or a cancelled request between phase 1 and phase 3): the request
answers 500, and the client retries with the same Idempotency-Key.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from config.settings import Settings
from connectors.base import ConnectorResult, Outcome
from connectors.inprocess import InProcessConnector
from crypto.pki import PkiPaths
from gateway.keys import CONNECTORS, DB_POOL, RESOLVER
from gateway.server import RunningGateway
from tests.e2e.test_bill_payments import bill_payment, open_bill
from tests.e2e.test_money_flows import balance_account, balance_payment, ledger_is_consistent
from tests.support.api import Api, api_client, card_payment
from tests.support.billers import Running, biller_stack


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    async with biller_stack(settings, utility_read_timeout=0.5) as stack:
        yield stack


@pytest.fixture
async def acme(running: Running, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "acme", running.gw.api_port) as api:
        yield api


def inprocess(gw: RunningGateway) -> InProcessConnector:
    connector = gw.api[CONNECTORS].payment["inprocess"]
    assert isinstance(connector, InProcessConnector)
    return connector


def fail_once(target: Any, name: str) -> list[int]:
    """Make ``target.name`` raise RuntimeError on its first call; returns the call counter."""
    original: Callable[..., Awaitable[Any]] = getattr(target, name)
    calls = [0]

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("interrupted")
        return await original(*args, **kwargs)

    setattr(target, name, flaky)
    return calls


async def balance_of(acme: Api, account: str) -> dict[str, int]:
    reply = await acme.get(f"/v1/accounts/{account}")
    return dict(reply.body["balance"])


async def wait_until(predicate: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(150):  # 15 s
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the condition never held")


async def make_due(gw: RunningGateway) -> None:
    """Let the resolver look at every unfinished attempt now (instead of after its grace period)."""
    async with gw.api[DB_POOL].acquire() as conn:
        await conn.execute(
            "UPDATE payment_attempts SET next_check = now() WHERE status IN ('started', 'pending', 'unknown')"
        )


# ---- 1. a refund of a top-up takes the money back off the balance -------------------------------


async def test_refund_of_a_card_topup_takes_the_money_back_off_the_balance(
    acme: Api, running: Running
) -> None:
    account = await balance_account(acme, 10000)
    topup = (await acme.get(f"/v1/accounts/{account}/entries")).body["data"][0]["payment"]
    refund = await acme.post("/v1/refunds", {"payment": topup})
    assert (refund.status, refund.body["status"]) == (200, "succeeded"), refund.body
    assert await balance_of(acme, account) == {"available": 0, "pending": 0}
    spend = await acme.post("/v1/payments", balance_payment(account, 100))
    assert (spend.body["status"], spend.body["failure"]["code"]) == ("failed", "insufficient_funds")
    await ledger_is_consistent(running.gw)


async def test_refund_of_a_spent_topup_is_refused_and_changes_nothing(acme: Api, running: Running) -> None:
    account = await balance_account(acme, 10000)
    topup = (await acme.get(f"/v1/accounts/{account}/entries")).body["data"][0]["payment"]
    spent = await acme.post("/v1/payments", balance_payment(account, 6000))
    assert spent.body["status"] == "succeeded"
    refund = await acme.post("/v1/refunds", {"payment": topup})
    assert (refund.status, refund.body["error"]["code"]) == (409, "balance_insufficient")
    assert await balance_of(acme, account) == {"available": 4000, "pending": 0}
    payment = await acme.get(f"/v1/payments/{topup}")
    assert payment.body["amount_refunded"] == 0
    partial = await acme.post("/v1/refunds", {"payment": topup, "amount": 4000})
    assert partial.body["status"] == "succeeded"
    assert await balance_of(acme, account) == {"available": 0, "pending": 0}
    await ledger_is_consistent(running.gw)


# ---- 2. a bill paid by bank transfer is booked and posted once the money settles ----------------


async def test_bill_paid_by_bank_transfer_is_booked_and_posted(acme: Api, running: Running) -> None:
    inprocess(running.gw).settle_after = 0.2
    bill = await open_bill(acme, "0031234567")
    body = bill_payment("0031234567", bill)
    body["payment_method"] = {
        "type": "bank_transfer",
        "bank_transfer": {"account_number": "6222020000001234"},
    }
    created = await acme.post("/v1/payments", body)
    assert (created.status, created.body["status"]) == (200, "processing"), created.body

    async def posted() -> bool:
        reply = await acme.get(f"/v1/payments/{created.body['id']}")
        return bool(reply.body["status"] == "succeeded")

    await wait_until(posted)
    payment = (await acme.get(f"/v1/payments/{created.body['id']}")).body
    assert payment["amount_captured"] == bill["amount_due"]
    assert payment["bill_posting"]["status"] == "posted"
    async with running.gw.api[DB_POOL].acquire() as conn:
        payable = await conn.fetchval(
            "SELECT sum(amount) FROM ledger_entries "
            "WHERE account_id LIKE 'sys_acme_biller_payable_bil_cn_power_%'"
        )
    assert payable == bill["amount_due"]
    assert [p.amount for p in running.utility.postings.values()] == [bill["amount_due"]]
    await ledger_is_consistent(running.gw)


# ---- 3. a retried refund resumes its attempt: one refund at the processor ------------------------


async def test_retried_refund_resumes_the_same_attempt(acme: Api, running: Running) -> None:
    paid = await acme.post("/v1/payments", card_payment(amount=5000))
    connector = inprocess(running.gw)
    calls = fail_once(connector, "refund")
    first = await acme.post("/v1/refunds", {"payment": paid.body["id"], "amount": 2000}, key="refund-3")
    assert first.status == 500
    retry = await acme.post("/v1/refunds", {"payment": paid.body["id"], "amount": 2000}, key="refund-3")
    assert (retry.status, retry.body["status"]) == (200, "succeeded"), retry.body
    async with running.gw.api[DB_POOL].acquire() as conn:
        refunds = await conn.fetch("SELECT id FROM refunds WHERE payment_id = $1", paid.body["id"])
        attempts = await conn.fetch(
            "SELECT id FROM payment_attempts WHERE payment_id = $1 AND operation = 'refund'", paid.body["id"]
        )
    assert [r["id"] for r in refunds] == [retry.body["id"]]
    assert len(attempts) == 1 and calls[0] == 2
    assert connector.charges[attempts[0]["id"]] == 1
    payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
    assert payment["amount_refunded"] == 2000
    await ledger_is_consistent(running.gw)


async def test_refund_nobody_retries_is_finished_by_the_resolver(acme: Api, running: Running) -> None:
    paid = await acme.post("/v1/payments", card_payment(amount=5000))
    fail_once(inprocess(running.gw), "refund")
    first = await acme.post("/v1/refunds", {"payment": paid.body["id"]})
    assert first.status == 500
    await make_due(running.gw)
    await running.gw.api[RESOLVER].resolve_due()
    async with running.gw.api[DB_POOL].acquire() as conn:
        status = await conn.fetchval("SELECT status FROM refunds WHERE payment_id = $1", paid.body["id"])
    assert status == "succeeded"
    await ledger_is_consistent(running.gw)


# ---- 4. a bill paid from a balance is debited once, whatever the crash --------------------------


async def test_balance_bill_interrupted_at_posting_is_debited_once(acme: Api, running: Running) -> None:
    account = await balance_account(acme, 50000)
    bill = await open_bill(acme, "0031234567")
    body = bill_payment("0031234567", bill)
    body["payment_method"] = balance_payment(account, 1)["payment_method"]
    _, biller = running.catalog.connector("bil_cn_power")
    fail_once(biller, "pay")
    first = await acme.post("/v1/payments", body, key="bill-4")
    assert first.status == 500
    retry = await acme.post("/v1/payments", body, key="bill-4")
    assert (retry.status, retry.body["status"]) == (200, "succeeded"), retry.body
    assert retry.body["bill_posting"]["status"] == "posted"
    assert await balance_of(acme, account) == {"available": 50000 - bill["amount_due"], "pending": 0}
    assert len(running.utility.postings) == 1
    await ledger_is_consistent(running.gw)


# ---- 5. a biller-rejection refund follows the connector's answer --------------------------------


async def test_biller_rejection_refund_refused_by_the_connector_is_not_booked(
    acme: Api, running: Running
) -> None:
    connector = inprocess(running.gw)

    async def refused(*, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        return ConnectorResult(Outcome.FAILED, decline_code="refund_rejected")

    connector.refund = refused  # type: ignore[method-assign]
    bill = await open_bill(acme, "0031239999")
    paid = await acme.post("/v1/payments", bill_payment("0031239999", bill))
    assert (paid.status, paid.body["status"]) == (200, "failed"), paid.body
    assert paid.body["failure"]["code"] == "biller_rejected"
    async with running.gw.api[DB_POOL].acquire() as conn:
        refund = await conn.fetchrow(
            "SELECT status, failure_code FROM refunds WHERE payment_id = $1", paid.body["id"]
        )
        payable = await conn.fetchval(
            "SELECT sum(amount) FROM ledger_entries "
            "WHERE account_id LIKE 'sys_acme_biller_payable_bil_cn_power_%'"
        )
    assert (refund["status"], refund["failure_code"]) == ("failed", "refund_rejected")
    assert payable == bill["amount_due"]  # still held: nothing went back to the card
    payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
    assert payment["amount_refunded"] == 0
    await ledger_is_consistent(running.gw)


async def test_biller_rejection_refund_that_raises_is_no_500_and_is_finished_later(
    acme: Api, running: Running
) -> None:
    fail_once(inprocess(running.gw), "refund")
    bill = await open_bill(acme, "0031239999")
    paid = await acme.post("/v1/payments", bill_payment("0031239999", bill))
    assert (paid.status, paid.body["status"]) == (200, "failed"), paid.body
    await make_due(running.gw)
    await running.gw.api[RESOLVER].resolve_due()
    async with running.gw.api[DB_POOL].acquire() as conn:
        status = await conn.fetchval("SELECT status FROM refunds WHERE payment_id = $1", paid.body["id"])
    assert status == "succeeded"
    payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
    assert payment["amount_refunded"] == bill["amount_due"]
    await ledger_is_consistent(running.gw)


# ---- 6. interrupted work is resolved; one bad item does not stop the resolver --------------------


async def test_interrupted_create_capture_and_cancel_are_resolved(acme: Api, running: Running) -> None:
    connector = inprocess(running.gw)
    fail_once(connector, "authorize")
    created = await acme.post("/v1/payments", card_payment(amount=3000))
    assert created.status == 500
    manual = await acme.post("/v1/payments", card_payment(amount=4000, capture_method="manual"))
    other = await acme.post("/v1/payments", card_payment(amount=4100, capture_method="manual"))
    fail_once(connector, "capture")
    assert (await acme.post(f"/v1/payments/{manual.body['id']}/capture", {})).status == 500
    fail_once(connector, "void")
    assert (await acme.post(f"/v1/payments/{other.body['id']}/cancel", {})).status == 500
    await make_due(running.gw)
    await running.gw.api[RESOLVER].resolve_due()
    async with running.gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch("SELECT id, status, amount_captured FROM payments ORDER BY amount")
        open_attempts = await conn.fetchval(
            "SELECT count(*) FROM payment_attempts WHERE status IN ('started', 'pending', 'unknown')"
        )
    by_amount = {r["id"]: (r["status"], r["amount_captured"]) for r in rows}
    assert by_amount[manual.body["id"]] == ("succeeded", 4000)
    assert by_amount[other.body["id"]] == ("canceled", 0)
    assert rows[0]["status"] == "failed"  # 3000: never reached the processor, so failed, not stuck
    assert open_attempts == 0
    await ledger_is_consistent(running.gw)


async def test_retried_capture_resumes_the_same_attempt(acme: Api, running: Running) -> None:
    connector = inprocess(running.gw)
    manual = await acme.post("/v1/payments", card_payment(amount=4000, capture_method="manual"))
    fail_once(connector, "capture")
    path = f"/v1/payments/{manual.body['id']}/capture"
    assert (await acme.post(path, {"amount_to_capture": 3000}, key="cap-6")).status == 500
    retry = await acme.post(path, {"amount_to_capture": 3000}, key="cap-6")
    assert (retry.status, retry.body["status"], retry.body["amount_captured"]) == (200, "succeeded", 3000)
    async with running.gw.api[DB_POOL].acquire() as conn:
        captures = await conn.fetch(
            "SELECT id FROM payment_attempts WHERE payment_id = $1 AND operation = 'capture'",
            manual.body["id"],
        )
    assert len(captures) == 1 and connector.charges[captures[0]["id"]] == 1


async def test_one_bad_item_does_not_stop_the_resolver(acme: Api, running: Running) -> None:
    connector = inprocess(running.gw)
    connector.settle_after = float("inf")
    bad = await acme.post(
        "/v1/payments",
        card_payment(amount=1000) | {"payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}}},
    )
    good = await acme.post(
        "/v1/payments",
        card_payment(amount=2000) | {"payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}}},
    )
    original = connector.sync

    async def sync(*, attempt_id: str, operation: str) -> ConnectorResult:
        async with running.gw.api[DB_POOL].acquire() as conn:
            payment = await conn.fetchval("SELECT payment_id FROM payment_attempts WHERE id = $1", attempt_id)
        if payment == bad.body["id"]:
            raise KeyError("a bug in one item")
        return await original(attempt_id=attempt_id, operation=operation)

    connector.sync = sync  # type: ignore[method-assign]
    connector.settle_after = 0.0
    await make_due(running.gw)
    await running.gw.api[RESOLVER].resolve_due()
    assert (await acme.get(f"/v1/payments/{good.body['id']}")).body["status"] == "succeeded"
    assert (await acme.get(f"/v1/payments/{bad.body['id']}")).body["status"] == "requires_action"
    assert running.gw.api[RESOLVER].health.failures == 1
    async with running.gw.api[DB_POOL].acquire() as conn:
        later = await conn.fetchval(
            "SELECT next_check > now() FROM payment_attempts WHERE payment_id = $1", bad.body["id"]
        )
    assert later  # backed off, not retried in a hot loop


async def test_the_resolver_loop_outlives_any_failure_and_readyz_reports_it() -> None:
    from gateway.metrics import Metrics
    from gateway.workers.resolver import run_resolver

    class Flaky:
        def __init__(self) -> None:
            self.calls = 0
            from gateway.services.resolver import ResolverHealth

            self.health = ResolverHealth()

        async def resolve_due(self) -> int:
            self.calls += 1
            if self.calls == 1:
                raise ValueError("not a database error")
            return 0

    flaky = Flaky()
    task = asyncio.create_task(run_resolver(flaky, 0.01, Metrics()))  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert not task.done() and flaky.calls > 2
    task.cancel()


async def test_readyz_reports_the_resolver(running: Running) -> None:
    import aiohttp

    url = f"http://127.0.0.1:{running.gw.ops_port}/readyz"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        body = await resp.json()
    assert body["checks"]["resolver"] == "ok"
    running.gw.api[RESOLVER].health.last_pass -= 3600
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 503
        assert (await resp.json())["checks"]["resolver"] == "stalled"


# ---- 7. bill checks run after the key claim: a replay answers from the stored response ----------


async def test_replay_of_a_finished_bill_payment_does_not_ask_the_biller(acme: Api, running: Running) -> None:
    bill = await open_bill(acme, "0031234567")
    body = bill_payment("0031234567", bill)
    first = await acme.post("/v1/payments", body, key="bill-7")
    assert first.body["status"] == "succeeded"
    catalog = running.catalog

    async def gone(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a replay must not validate the bill again")

    catalog.validate_payment = gone  # type: ignore[method-assign]
    replay = await acme.post("/v1/payments", body, key="bill-7")
    assert (replay.status, replay.headers.get("Idempotent-Replayed")) == (200, "true")
    assert replay.raw == first.raw
