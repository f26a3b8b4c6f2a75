"""Issue #16: nothing is polled forever. When a connector's inquiry budget is spent with the outcome
still unknown, its terminal policy applies (a pending wallet order or bank transfer is cancelled at
the connector under the same reference), and what no policy can settle goes to the manual queue,
with an event, a gauge and no more polling. Real gateway, PostgreSQL and simulators (mTLS callbacks)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from typing import Any

import pytest

from crypto.pki import PkiPaths
from gateway.keys import DB_POOL, METRICS, RESOLVER
from gateway.server import RunningGateway
from gateway.services.resolver import Budget
from tests.e2e.test_async_connectors import (
    Stack,
    bank_transfer,
    events,
    ledger_kinds,
    stack,
    wait_for_status,
    wallet,
)
from tests.support.api import api_client
from tests.support.faultproxy import Fault, FaultProxy

__all__ = ["stack"]  # the fixture, shared with test_async_connectors


@pytest.fixture
def read_timeout() -> float:
    return 1.0  # a bank that never answers is given up on after 1 s (pending, then the resolver)


@pytest.fixture
def spend_at_once(stack: Stack) -> Iterator[None]:
    """Budgets of one inquiry for the bank and the wallet: the terminal policy at the first look."""
    budgets = stack.gw.api[RESOLVER].budgets
    saved = dict(budgets)
    budgets.update(bank_transfer=Budget(inquiries=1), ewallet=Budget(inquiries=1))
    yield
    budgets.clear()
    budgets.update(saved)


async def attempts(gw: RunningGateway, payment_id: str) -> list[dict[str, Any]]:
    async with gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT operation, status, next_check, manual_review_reason FROM payment_attempts "
            "WHERE payment_id = $1 ORDER BY created, operation",
            payment_id,
        )
    return [dict(row) for row in rows]


async def attempt_id(gw: RunningGateway, payment_id: str, operation: str) -> str:
    async with gw.api[DB_POOL].acquire() as conn:
        found: str = await conn.fetchval(
            "SELECT id FROM payment_attempts WHERE payment_id = $1 AND operation = $2", payment_id, operation
        )
    return found


async def wait_for_event(
    stack: Stack, payment_id: str, event_type: str, *, count: int = 1, seconds: float = 5.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = await events(stack.acme, payment_id, event_type)
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {count} {event_type} event(s) for {payment_id}")


@pytest.mark.usefixtures("spend_at_once")
async def test_a_wallet_order_never_paid_is_closed_when_its_budget_is_spent(stack: Stack) -> None:
    created = await stack.acme.post("/v1/payments", wallet("alipay"))
    payment = created.body
    assert payment["status"] == "requires_action"
    canceled = await wait_for_status(stack.acme, payment["id"], "canceled")
    assert (canceled["amount_captured"], canceled["next_action"]) == (0, None)
    order = stack.wallet.find(payment["connector_reference"])
    assert order is not None and order.status == "closed"  # the wallet's own word: nothing moved
    assert [
        (a["operation"], a["status"], a["next_check"]) for a in await attempts(stack.gw, payment["id"])
    ] == [
        ("authorize", "failed", None),
        ("void", "succeeded", None),
    ]
    assert len(await events(stack.acme, payment["id"], "payment.canceled")) == 1
    assert await ledger_kinds(stack.gw, payment["id"]) == []


@pytest.mark.usefixtures("spend_at_once")
async def test_a_refund_the_bank_never_answers_goes_to_the_manual_queue_and_an_operator_settles_it(
    stack: Stack, pki: PkiPaths
) -> None:
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011112222"))
    payment = await wait_for_status(stack.acme, created.body["id"], "succeeded")
    # The bank accepts connections and reads requests but never answers again.
    port = stack.bank.port
    await stack.bank.close()
    silent = await FaultProxy.start(upstream_port=1, port=port)
    silent.set(Fault.blackhole())
    refund = await stack.acme.post("/v1/refunds", {"payment": payment["id"], "amount": 1000})
    assert refund.status == 200, refund.body
    assert refund.body["status"] == "pending"

    queued = await wait_for_event(stack, payment["id"], "payment.manual_review")
    assert len(queued) == 1
    rows = await attempts(stack.gw, payment["id"])
    assert [(a["operation"], a["status"], a["next_check"], a["manual_review_reason"]) for a in rows][-1] == (
        "refund",
        "unknown",
        None,  # no longer polled
        "refund_unanswered",
    )
    resolver = stack.gw.api[RESOLVER]
    assert await resolver.manual_review_size() == 1
    samples = stack.gw.api[METRICS].registry.get_sample_value(
        "payhub_manual_reviews_total", {"operation": "refund", "reason": "refund_unanswered"}
    )
    assert samples == 1
    await asyncio.sleep(1.5)  # three resolver passes: the queued attempt is not looked at again
    assert await attempts(stack.gw, payment["id"]) == rows
    assert len(await events(stack.acme, payment["id"], "payment.manual_review")) == 1
    await silent.close()

    # An operator works the queue: the bank says the refund never happened.
    async with api_client(pki, "ops", stack.gw.api_port) as ops:
        listed = await ops.get("/v1/manual_reviews")
        assert listed.status == 200, listed.body
        (item,) = [r for r in listed.body["data"] if r["payment"] == payment["id"]]
        assert (item["operation"], item["reason"], item["amount"], item["currency"]) == (
            "refund",
            "refund_unanswered",
            1000,
            "CNY",
        )
        assert item["refund"] == refund.body["id"]
        refused = await stack.acme.get("/v1/manual_reviews")
        assert refused.status == 403  # operators only
        resolved = await ops.post(f"/v1/manual_reviews/{item['id']}/resolve", {"outcome": "failed"})
        assert resolved.status == 200, resolved.body
        assert resolved.body["amount_refunded"] == 0  # refundable again
        again = await ops.post(f"/v1/manual_reviews/{item['id']}/resolve", {"outcome": "succeeded"})
        assert (again.status, again.body["error"]["code"]) == (404, "resource_missing")
        empty = await ops.get("/v1/manual_reviews")
        assert [r for r in empty.body["data"] if r["payment"] == payment["id"]] == []
    failed = (await stack.acme.get(f"/v1/refunds/{refund.body['id']}")).body
    assert (failed["status"], failed["failure"]["code"]) == ("failed", "operator_failed")
    assert await resolver.manual_review_size() == 0
    async with stack.gw.api[DB_POOL].acquire() as conn:
        actor = await conn.fetchval(
            "SELECT actor FROM audit_events WHERE object = $1 ORDER BY seq DESC LIMIT 1", refund.body["id"]
        )
    assert actor == "spiffe://payhub.local/tenant/ops/role/operator"


@pytest.mark.usefixtures("spend_at_once")
async def test_a_bank_transfer_never_sent_is_cancelled_at_the_bank_and_a_late_notice_changes_nothing(
    stack: Stack,
) -> None:
    stack.bank.settle_after = math.inf  # the payer never sends the money
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011113333"))
    payment = created.body
    assert payment["status"] == "processing"
    canceled = await wait_for_status(stack.acme, payment["id"], "canceled")
    assert canceled["amount_captured"] == 0
    transfer = stack.bank.find(payment["connector_reference"])
    assert transfer is not None and transfer.status == "canceled"  # the bank's word: it cannot settle
    rows = await attempts(stack.gw, payment["id"])
    assert [(a["operation"], a["status"], a["next_check"]) for a in rows] == [
        ("authorize", "failed", None),
        ("void", "succeeded", None),
    ]
    # A forged-late "settled" notice (signed, as the bank would send it) moves nothing.
    delivery = await stack.bank.notify(payment["connector_reference"], "settled")
    assert delivery.status == 200
    after = (await stack.acme.get(f"/v1/payments/{payment['id']}")).body
    assert (after["status"], after["amount_captured"]) == ("canceled", 0)
    assert await ledger_kinds(stack.gw, payment["id"]) == []
    assert len(await events(stack.acme, payment["id"], "payment.canceled")) == 1


@pytest.mark.usefixtures("spend_at_once")
async def test_a_transfer_settled_when_the_budget_is_spent_is_collected_not_cancelled(stack: Stack) -> None:
    stack.bank.settle_after = math.inf
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011110005"))  # no callback
    transfer = stack.bank.find(created.body["connector_reference"])
    assert transfer is not None
    transfer.status = "settled"  # the money arrived; the bank tells no one (0005: poll only)
    settled = await wait_for_status(stack.acme, created.body["id"], "succeeded")
    assert settled["amount_captured"] == 4200
    assert await ledger_kinds(stack.gw, created.body["id"]) == ["payment.collect"]


@pytest.mark.usefixtures("spend_at_once")
async def test_a_cancel_the_bank_never_answers_is_sent_once_then_queued(stack: Stack, pki: PkiPaths) -> None:
    stack.bank.settle_after = math.inf
    created = await stack.acme.post("/v1/payments", bank_transfer("6222000011114444"))
    payment_id = created.body["id"]
    port = stack.bank.port
    await stack.bank.close()
    silent = await FaultProxy.start(upstream_port=1, port=port)
    silent.set(Fault.blackhole())  # neither the inquiry nor the cancel gets an answer any more

    # The cancel gets no answer (the outbound client's tries each wait out the time-outs).
    await wait_for_event(stack, payment_id, "payment.manual_review", seconds=30.0)
    async with stack.gw.api[DB_POOL].acquire() as conn:  # the authorize's next look comes now
        await conn.execute(
            "UPDATE payment_attempts SET next_check = now() "
            "WHERE payment_id = $1 AND operation = 'authorize'",
            payment_id,
        )
    await wait_for_event(stack, payment_id, "payment.manual_review", count=2, seconds=30.0)
    rows = await attempts(stack.gw, payment_id)
    assert [(a["operation"], a["status"], a["next_check"], a["manual_review_reason"]) for a in rows] == [
        ("authorize", "pending", None, "cancel_unanswered"),
        ("void", "unknown", None, "outcome_unknown"),
    ]  # one cancel sent, not one per pass; both wait for an operator
    after = (await stack.acme.get(f"/v1/payments/{payment_id}")).body
    assert (after["status"], after["amount_captured"]) == ("processing", 0)
    await silent.close()

    # The bank confirms to an operator that the cancel went through: the payment is canceled and
    # its authorization leaves the queue with it.
    void_id = await attempt_id(stack.gw, payment_id, "void")
    async with api_client(pki, "ops", stack.gw.api_port) as ops:
        resolved = await ops.post(f"/v1/manual_reviews/{void_id}/resolve", {"outcome": "succeeded"})
        assert (resolved.status, resolved.body["status"]) == (200, "canceled"), resolved.body
        queue = (await ops.get("/v1/manual_reviews")).body["data"]
    assert [r for r in queue if r["payment"] == payment_id] == []
    assert await ledger_kinds(stack.gw, payment_id) == []
