"""Phase 3 in one statement (gateway/store/settlement.py): what it renders is what it stores, and a
payment changed since it was read gets nothing half-applied."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from gateway.domain.payment_state import Status
from gateway.metrics import Metrics
from gateway.services.outcomes import Decision
from gateway.services.settle import HUB, Settler
from gateway.store import payments as store
from gateway.store import settlement
from gateway.store.risk import RiskKeys
from gateway.views import render


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def recorded(conn: asyncpg.Connection, n: int) -> settlement.Known:
    payment = store.NewPayment(
        id=f"pay_settle{n}",
        tenant="acme",
        amount=1250,
        currency="CNY",
        method="card",
        payment_method=orjson.dumps({"type": "card", "card": {"last4": "1111"}}).decode(),
        capture_method="automatic",
        customer_id="cus_1",
        customer=None,
        description=None,
        metadata="{}",
        connector="iso8583_card",
        risk_keys=RiskKeys(),
    )
    row, version = await store.start_payment(
        conn, payment, attempt_id=f"att_settle{n}", idempotency_key="none", recovery_point="attempt_created"
    )
    return settlement.Known(row, version)


RISK = '{"score": 0, "decision": "allow", "reasons": [], "ruleset": "test"}'  # decided after phase 1
SUCCEEDED = Decision(
    store.PaymentUpdate(Status.SUCCEEDED, 1250, 1250, "ref-1", risk=RISK),
    "succeeded",
    "payment.succeeded",
    1250,
)


async def counts(conn: asyncpg.Connection, payment_id: str) -> tuple[int, int, int, str]:
    row = await conn.fetchrow(
        """SELECT (SELECT count(*) FROM events WHERE object_id = $1),
                  (SELECT count(*) FROM ledger_transactions WHERE payment_id = $1),
                  (SELECT count(*) FROM audit_events WHERE object = $1),
                  (SELECT status FROM payment_attempts WHERE payment_id = $1)""",
        payment_id,
    )
    assert row is not None
    return row[0], row[1], row[2], row[3]


async def test_what_is_rendered_before_the_statement_is_what_it_stores(conn: asyncpg.Connection) -> None:
    known = await recorded(conn, 1)
    outcome = await Settler(Metrics()).payment(
        conn, "acme", known.row.id, "att_settle1", SUCCEEDED, caller=HUB, action="payment.create", known=known
    )
    stored = await store.get_payment(conn, tenant="acme", payment_id=known.row.id)
    assert stored is not None
    assert orjson.loads(outcome.body) == orjson.loads(render.encode(render.payment(stored)))
    assert (stored.status, stored.amount_captured, orjson.loads(stored.risk or "null")) == (
        "succeeded",
        1250,
        orjson.loads(RISK),
    )
    assert await counts(conn, known.row.id) == (1, 1, 1, "succeeded")


async def test_a_payment_changed_since_it_was_read_is_read_again(conn: asyncpg.Connection) -> None:
    known = await recorded(conn, 2)
    await conn.execute("UPDATE payments SET description = 'changed meanwhile' WHERE id = $1", known.row.id)
    plan_on_stale = settlement.Settlement(
        known=known,
        update=SUCCEEDED.update,
        updated=known.row.updated,
        attempt_id="att_settle2",
        attempt_status="succeeded",
        bill_posting_from=None,
        posting=None,
        bill_attempt=None,
        count_decline=False,
        extra_events=[],
        record=store_record(known.row.id),
    )
    with pytest.raises(settlement.Stale):
        await settlement.settle(conn, plan_on_stale)
    # Nothing of it was written: the attempt is still in flight, no event, no audit row.
    assert await counts(conn, known.row.id) == (0, 0, 0, "started")
    # The settler reads the row again and applies the answer to it, description included.
    outcome = await Settler(Metrics()).payment(
        conn, "acme", known.row.id, "att_settle2", SUCCEEDED, caller=HUB, action="payment.create", known=known
    )
    body = orjson.loads(outcome.body)
    assert (body["status"], body["description"]) == ("succeeded", "changed meanwhile")
    assert await counts(conn, known.row.id) == (1, 1, 1, "succeeded")


async def test_an_attempt_settled_first_is_not_applied_twice(conn: asyncpg.Connection) -> None:
    known = await recorded(conn, 3)
    settler = Settler(Metrics())
    first = await settler.payment(
        conn, "acme", known.row.id, "att_settle3", SUCCEEDED, caller=HUB, action="payment.create", known=known
    )
    again = await settler.payment(
        conn, "acme", known.row.id, "att_settle3", SUCCEEDED, caller=HUB, action="payment.callback"
    )
    assert orjson.loads(again.body)["status"] == orjson.loads(first.body)["status"] == "succeeded"
    assert await counts(conn, known.row.id) == (1, 1, 1, "succeeded")


def store_record(payment_id: str) -> settlement.OutcomeRecord:
    return settlement.OutcomeRecord(
        tenant="acme",
        object_id=payment_id,
        event_id="evt_stale",
        event_type="payment.succeeded",
        body=b"{}",
        actor="payhub",
        action="payment.create",
        outcome="succeeded",
        source=None,
        details={},
        idempotency_key=None,
    )
