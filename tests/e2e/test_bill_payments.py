"""Bill payments end to end: collect (card or stored balance), post to the biller over signed HTTP,
refund on rejection, settle a timed-out posting by status inquiry; the ledger stays balanced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import pytest

from config.settings import RiskRuleSettings, RiskTenantSettings, Settings
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL, RESOLVER
from gateway.services.resolver import Budget
from tests.e2e.test_money_flows import balance_account, ledger_is_consistent
from tests.support.api import Api, api_client, card_payment
from tests.support.billers import Running, biller_stack
from tests.support.mtls import hold_async_settlement


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    async with biller_stack(settings, utility_read_timeout=0.5) as stack:
        yield stack


@pytest.fixture
async def acme(running: Running, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "acme", running.gw.api_port) as api:
        yield api


async def open_bill(acme: Api, account: str) -> dict[str, Any]:
    fetched = await acme.post(
        "/v1/bills/fetch",
        {"biller": "bil_cn_power", "customer_params": {"account_number": account}},
        key=None,
    )
    assert fetched.status == 200, fetched.body
    return dict(fetched.body["data"][0])


def bill_payment(account: str, bill: dict[str, Any], **extra: Any) -> dict[str, Any]:
    body = card_payment(amount=bill["amount_due"], currency="CNY")
    body["bill"] = {
        "biller": "bil_cn_power",
        "customer_params": {"account_number": account},
        "bill_ref": bill["bill_ref"],
    }
    body.update(extra)
    return body


async def events_of(running: Running, payment_id: str) -> list[str]:
    async with running.gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT type FROM events WHERE object_id = $1 ORDER BY created, id", payment_id
        )
    return [row["type"] for row in rows]


async def test_electricity_bill_fetched_and_paid_by_card(acme: Api, running: Running) -> None:
    bill = await open_bill(acme, "0031234567")
    paid = await acme.post("/v1/payments", bill_payment("0031234567", bill))
    assert paid.status == 200, paid.body
    payment = paid.body
    assert payment["status"] == "succeeded"
    assert payment["bill_posting"]["status"] == "posted"
    assert payment["bill_posting"]["biller_reference"]
    assert payment["amount_captured"] == bill["amount_due"]
    assert "bill.posted" in await events_of(running, payment["id"])
    refund = await acme.post("/v1/refunds", {"payment": payment["id"]})
    assert (refund.status, refund.body["error"]["code"]) == (409, "bill_payment_not_refundable")
    async with running.gw.api[DB_POOL].acquire() as conn:
        payable = await conn.fetchval(
            "SELECT sum(amount) FROM ledger_entries "
            "WHERE account_id LIKE 'sys_acme_biller_payable_bil_cn_power_%'"
        )
    assert payable == bill["amount_due"]  # collected money is owed to the biller, not the tenant
    await ledger_is_consistent(running.gw)


async def test_biller_rejection_refunds_the_collected_money(acme: Api, running: Running) -> None:
    bill = await open_bill(acme, "0031239999")
    paid = await acme.post("/v1/payments", bill_payment("0031239999", bill))
    assert paid.status == 200, paid.body
    payment = paid.body
    assert (payment["status"], payment["failure"]["code"]) == ("failed", "biller_rejected")
    assert payment["amount_refunded"] == payment["amount_captured"] == bill["amount_due"]
    assert payment["bill_posting"]["status"] == "rejected"
    async with running.gw.api[DB_POOL].acquire() as conn:
        refund = await conn.fetchrow(
            "SELECT status, amount, reason FROM refunds WHERE payment_id = $1", payment["id"]
        )
        payable = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0) FROM ledger_entries "
            "WHERE account_id LIKE 'sys_acme_biller_payable_bil_cn_power_%'"
        )
    assert tuple(refund) == ("succeeded", bill["amount_due"], "biller_rejected")
    assert payable == 0
    events = await events_of(running, payment["id"])
    assert events[-1] == "payment.failed"
    await ledger_is_consistent(running.gw)


async def test_timed_out_posting_is_confirmed_by_status_inquiry(acme: Api, running: Running) -> None:
    bill = await open_bill(acme, "0031237777")
    paid = await acme.post("/v1/payments", bill_payment("0031237777", bill))
    assert paid.status == 200, paid.body
    assert paid.body["status"] == "processing"
    assert paid.body["bill_posting"]["status"] == "pending"
    payment = paid.body
    for _ in range(100):
        await asyncio.sleep(0.2)
        payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
        if payment["status"] != "processing":
            break
    assert payment["status"] == "succeeded"
    assert payment["bill_posting"]["status"] == "posted"
    async with running.gw.api[DB_POOL].acquire() as conn:
        posts = await conn.fetchval(
            "SELECT count(*) FROM payment_attempts WHERE payment_id = $1 AND operation = 'post_bill'",
            payment["id"],
        )
    assert posts == 1  # one reference at the biller: never posted twice
    assert len(running.utility.postings) == 1


async def test_bill_paid_from_a_stored_balance(acme: Api, running: Running) -> None:
    account = await balance_account(acme, 50_000)
    bill = await open_bill(acme, "0031234567")
    body = bill_payment(
        "0031234567", bill, payment_method={"type": "balance", "balance": {"account": account}}
    )
    paid = await acme.post("/v1/payments", body)
    assert paid.body["status"] == "succeeded", paid.body
    rejected_bill = await open_bill(acme, "0031239999")
    rejected = await acme.post(
        "/v1/payments",
        bill_payment(
            "0031239999", rejected_bill, payment_method={"type": "balance", "balance": {"account": account}}
        ),
    )
    assert rejected.body["failure"]["code"] == "biller_rejected"
    balance = (await acme.get(f"/v1/accounts/{account}")).body["balance"]
    assert balance["available"] == 50_000 - bill["amount_due"]  # the rejected one came back
    await ledger_is_consistent(running.gw)


async def test_phone_top_up_and_bad_inputs(acme: Api) -> None:
    topup = card_payment(amount=3000)
    topup["bill"] = {"biller": "bil_cn_mobile", "customer_params": {"msisdn": "+8613812345678"}}
    reply = await acme.post("/v1/payments", topup)
    assert reply.status == 200, reply.body
    assert (reply.body["status"], reply.body["bill_posting"]["status"]) == ("succeeded", "posted")
    odd = {**topup, "amount": 1234}
    refused = await acme.post("/v1/payments", odd)
    assert (refused.status, refused.body["error"]["param"]) == (400, "amount")
    nobody = {**topup, "bill": {"biller": "bil_cn_mobile", "customer_params": {"msisdn": "+8613800000000"}}}
    refused = await acme.post("/v1/payments", nobody)
    assert (refused.status, refused.body["error"]["param"]) == (400, "bill.customer_params.msisdn")
    no_dues = card_payment(amount=100)
    no_dues["bill"] = {
        "biller": "bil_cn_power",
        "customer_params": {"account_number": "0031230000"},
        "bill_ref": "x",
    }
    refused = await acme.post("/v1/payments", no_dues)
    assert refused.status in (400, 404)
    assert refused.body["error"]["param"].startswith("bill.")


async def test_reconciliation_finds_a_planted_mismatch(acme: Api, running: Running) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from gateway.services.recon import reconcile

    for account in ("0031234567", "0031234568", "0031234569"):
        bill = await open_bill(acme, account)
        paid = await acme.post("/v1/payments", bill_payment(account, bill))
        assert paid.body["status"] == "succeeded", paid.body
    [first, second, _third] = sorted(running.utility.postings.values(), key=lambda p: p.serial)
    first.amount += 1  # the biller recorded a different amount
    del running.utility.postings[second.reference]  # and lost one posting altogether
    biller = running.catalog.get("bil_cn_power")
    today = datetime.now(ZoneInfo(biller.timezone)).date()  # the biller's business day
    _, connector = running.catalog.connector("bil_cn_power")
    result = await reconcile(running.gw.api[DB_POOL], connector, biller.id, today, timezone=biller.timezone)
    counts = (result.matched, result.mismatched, result.missing_at_hub, result.missing_at_biller)
    assert counts == (1, 1, 0, 1)
    async with running.gw.api[DB_POOL].acquire() as conn:
        kinds = sorted(r["kind"] for r in await conn.fetch("SELECT kind FROM recon_items"))
        runs = await conn.fetchval("SELECT count(*) FROM recon_runs WHERE biller = 'bil_cn_power'")
    assert kinds == ["amount_mismatch", "missing_at_biller"]
    assert runs == 1


async def test_a_bill_paid_by_wallet_is_posted_once_the_wallet_settles(acme: Api) -> None:
    """Asynchronous collection: the resolver settles the wallet payment, then the bill is posted."""
    body = {
        "amount": 3000,
        "currency": "CNY",
        "payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}},
        "bill": {"biller": "bil_cn_mobile", "customer_params": {"msisdn": "+8613812345678"}},
    }
    created = await acme.post("/v1/payments", body)
    assert created.body["status"] == "requires_action", created.body
    payment = created.body
    for _ in range(60):
        await asyncio.sleep(0.2)
        payment = (await acme.get(f"/v1/payments/{created.body['id']}")).body
        if payment["status"] not in ("requires_action", "processing"):
            break
    assert payment["status"] == "succeeded"
    assert payment["bill_posting"]["status"] == "posted"


async def test_a_posting_that_never_becomes_definite_is_reversed_and_refunded(
    acme: Api, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The terminal policy at the first inquiry.
    monkeypatch.setitem(running.gw.api[RESOLVER].budgets, "utility_biller", Budget(inquiries=1))
    bill = await open_bill(acme, "0031237777")
    paid = await acme.post("/v1/payments", bill_payment("0031237777", bill))
    assert paid.body["bill_posting"]["status"] == "pending", paid.body
    running.utility.postings.clear()  # the biller lost it: its status inquiry never turns definite
    payment = paid.body
    for _ in range(100):
        await asyncio.sleep(0.2)
        payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
        if payment["status"] != "processing":
            break
    assert (payment["status"], payment["failure"]["code"]) == ("failed", "biller_rejected")
    assert payment["amount_refunded"] == payment["amount_captured"]
    assert [p.status for p in running.utility.postings.values()] == ["REVERSED"]  # 冲正 recorded
    await ledger_is_consistent(running.gw)


async def test_a_posting_the_biller_lost_is_posted_again_under_the_same_reference(
    acme: Api, running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #16's scenario: the posting timed out, then the biller restarted without its records.
    Its "no such reference" proves nothing was posted, so the hub posts again, same reference; the
    payment ends posted, once, instead of being polled on for an hour and reversed."""
    from gateway.services import bills

    monkeypatch.setattr(bills, "PENDING_RECHECK", 0.5)  # the first inquiry soon after the time-out
    bill = await open_bill(acme, "0031247777")
    paid = await acme.post("/v1/payments", bill_payment("0031247777", bill))
    assert paid.body["bill_posting"]["status"] == "pending", paid.body
    [reference] = running.utility.postings
    running.utility.postings.clear()  # the biller restarted and lost its book
    payment = paid.body
    for _ in range(100):
        await asyncio.sleep(0.2)
        payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
        if payment["status"] != "processing":
            break
    assert (payment["status"], payment["bill_posting"]["status"]) == ("succeeded", "posted"), payment
    assert list(running.utility.postings) == [reference]  # posted again under the same reference
    assert running.utility.postings[reference].status == "SUCCESS"
    async with running.gw.api[DB_POOL].acquire() as conn:
        posts = await conn.fetch(
            "SELECT id, status FROM payment_attempts WHERE payment_id = $1 AND operation = 'post_bill'",
            payment["id"],
        )
    assert [(p["id"], p["status"]) for p in posts] == [(reference, "succeeded")]
    await ledger_is_consistent(running.gw)


async def test_daily_reconciliation_runs_each_biller_once(running: Running) -> None:
    from gateway.workers.daily_recon import reconcile_due

    pool = running.gw.api[DB_POOL]
    first = await reconcile_due(pool, running.catalog)
    assert first == len(running.catalog.list())  # every biller's previous business day, fetched and signed
    assert await reconcile_due(pool, running.catalog) == 0  # already done: not again
    async with pool.acquire() as conn:
        days = await conn.fetch("SELECT biller, day FROM recon_runs")
    assert len({(row["biller"], row["day"]) for row in days}) == first


@pytest.fixture
async def reviewed(settings: Settings, pki: PkiPaths) -> AsyncIterator[tuple[Running, Api, Api]]:
    """Every payment of customer cus_reviewed is held for an operator's review."""
    rule = RiskRuleSettings(id="review_me", when="customer.id == 'cus_reviewed'", action="review")
    risk = msgspec.structs.replace(settings.risk, tenants={"acme": RiskTenantSettings(rules=[rule])})
    settings = msgspec.structs.replace(settings, risk=risk)
    async with (
        biller_stack(settings, utility_read_timeout=0.5) as stack,
        api_client(pki, "acme", stack.gw.api_port) as acme,
        api_client(pki, "ops", stack.gw.api_port) as ops,
    ):
        yield stack, acme, ops


async def test_a_bill_payment_approved_in_review_is_collected_and_posted(
    reviewed: tuple[Running, Api, Api],
) -> None:
    running, acme, ops = reviewed
    bill = await open_bill(acme, "0031234568")
    body = bill_payment("0031234568", bill, customer={"id": "cus_reviewed"})
    held = await acme.post("/v1/payments", body)
    assert held.body["status"] == "under_review", held.body
    approved = await ops.post(f"/v1/reviews/rev_{held.body['id'].removeprefix('pay_')}/approve", key=None)
    assert approved.status == 200, approved.body
    payment = approved.body
    assert (payment["status"], payment["amount_captured"]) == ("succeeded", bill["amount_due"]), payment
    assert payment["bill_posting"]["status"] == "posted"
    async with running.gw.api[DB_POOL].acquire() as conn:
        payable = await conn.fetchval(
            "SELECT sum(amount) FROM ledger_entries "
            "WHERE account_id LIKE 'sys_acme_biller_payable_bil_cn_power_%'"
        )
    assert payable == bill["amount_due"]
    await ledger_is_consistent(running.gw)


async def test_a_bank_transfer_approved_in_review_waits_for_the_bank_like_any(
    reviewed: tuple[Running, Api, Api],
) -> None:
    running, acme, ops = reviewed
    hold_async_settlement(running.gw)
    body = {
        "amount": 5000,
        "currency": "CNY",
        "payment_method": {"type": "bank_transfer", "bank_transfer": {"account_number": "6222000011114321"}},
        "customer": {"id": "cus_reviewed"},
    }
    held = await acme.post("/v1/payments", body)
    assert held.body["status"] == "under_review", held.body
    approved = await ops.post(f"/v1/reviews/rev_{held.body['id'].removeprefix('pay_')}/approve", key=None)
    assert (approved.status, approved.body["status"]) == (200, "processing"), approved.body
    async with running.gw.api[DB_POOL].acquire() as conn:
        attempt = await conn.fetchrow(
            # The released attempt (the one recorded with the payment ended unsent when it was held).
            """SELECT status, next_check IS NOT NULL FROM payment_attempts
               WHERE payment_id = $1 AND decline_code IS DISTINCT FROM 'risk_decision'""",
            held.body["id"],
        )
    assert tuple(attempt) == ("pending", True)  # answered pending: the resolver polls it at its back-off


async def test_a_posting_whose_biller_stays_unreachable_goes_to_the_manual_queue_and_an_operator_posts_it(
    acme: Api, running: Running, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #16: nothing is polled forever. The posting times out, then the biller stops answering
    (503 to everything) until the budget is spent: the manual queue, then the operator's answer."""
    monkeypatch.setitem(running.gw.api[RESOLVER].budgets, "utility_biller", Budget(inquiries=1))
    bill = await open_bill(acme, "0031257777")
    paid = await acme.post("/v1/payments", bill_payment("0031257777", bill))
    assert paid.body["bill_posting"]["status"] == "pending", paid.body
    async with aiohttp.ClientSession() as session:
        faults = f"http://127.0.0.1:{running.utility_port}/faults"
        async with session.post(faults, json={"error_rate": 1.0}) as turned:
            assert turned.status == 200
    payment = paid.body
    for _ in range(100):
        await asyncio.sleep(0.2)
        payment = (await acme.get(f"/v1/payments/{paid.body['id']}")).body
        if payment["bill_posting"]["status"] != "pending":
            break
    assert (payment["status"], payment["bill_posting"]["status"]) == ("processing", "manual_review")
    assert (await events_of(running, payment["id"])).count("payment.manual_review") == 1

    async with api_client(pki, "ops", running.gw.api_port) as ops:
        queue = (await ops.get("/v1/manual_reviews")).body["data"]
        (item,) = [r for r in queue if r["payment"] == payment["id"]]
        assert (item["operation"], item["reason"]) == ("post_bill", "biller_unreachable")
        # The biller's own records (its recon file, a phone call) say the posting went through.
        resolved = await ops.post(
            f"/v1/manual_reviews/{item['id']}/resolve", {"outcome": "succeeded", "reference": "SER-42"}
        )
    assert resolved.status == 200, resolved.body
    assert (resolved.body["status"], resolved.body["bill_posting"]) == (
        "succeeded",
        {"status": "posted", "biller_reference": "SER-42", "code": None},
    )
    assert (await events_of(running, payment["id"])).count("bill.posted") == 1
    await ledger_is_consistent(running.gw)
