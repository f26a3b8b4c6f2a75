"""load/growth.py (issue #13): the preload writes what card payments write, balanced, with
the gateway's ids, and the gateway's own reads find it. Small N on a fresh migrated database."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from gateway.ids import new_id, time_part
from gateway.store import ledger
from gateway.store import payments as payment_store
from gateway.workers.pruner import RETENTION_HOURS
from load import growth

ROWS = 2_000
CUSTOMERS = 50
TOPUPS = DECLINED = ROWS // growth.MIX
COLLECTED = ROWS - DECLINED  # a ledger transaction each
PREFIXES = {"payments": "pay", "payment_attempts": "att", "ledger_transactions": "ltx", "events": "evt"}
RECEIVABLE = ledger.SystemAccount("acme", "connector_receivable", growth.CONNECTOR, growth.CURRENCY).id
CLEARING = ledger.SystemAccount("acme", "tenant_clearing", "default", growth.CURRENCY).id

UNBALANCED = """
SELECT count(*) FROM (
    SELECT transaction_id FROM ledger_entries GROUP BY transaction_id, currency HAVING sum(amount) <> 0
) unbalanced
"""
WITHOUT_ENTRIES = """
SELECT count(*) FROM ledger_transactions t
WHERE NOT EXISTS (SELECT FROM ledger_entries e WHERE e.transaction_id = t.id)
"""
BALANCES = """
SELECT a.id, a.customer_id, a.available, a.pending, coalesce(sum(e.amount), 0) AS total
FROM ledger_accounts a LEFT JOIN ledger_entries e ON e.account_id = a.id
WHERE a.kind = 'customer_balance'
GROUP BY a.id
"""


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    try:
        yield connection
    finally:
        await connection.close()


async def count(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    return int(await conn.fetchval(sql, *args) or 0)


async def one(conn: asyncpg.Connection, sql: str, *args: object) -> asyncpg.Record:
    row = await conn.fetchrow(sql, *args)
    assert row is not None, sql
    return row


async def assert_ledger_holds(conn: asyncpg.Connection) -> None:
    """Every transaction has entries and sums to zero per currency; every customer balance is the
    sum of its entries, and the top-ups made some."""
    assert await count(conn, WITHOUT_ENTRIES) == 0
    assert await count(conn, UNBALANCED) == 0
    balances = await conn.fetch(BALANCES)
    assert balances
    assert [r["id"] for r in balances if (r["available"], r["pending"]) != (r["total"], 0)] == []
    assert sum(r["available"] for r in balances) > 0


async def test_preload_writes_balanced_realistic_rows(db_url: str, conn: asyncpg.Connection) -> None:
    await growth.preload(db_url, ROWS, customers=CUSTOMERS)

    # Counts: what ROWS card payments write; one in MIX a top-up, one in MIX declined (no ledger).
    for table in ("payments", "payment_attempts", "events"):
        assert await count(conn, f"SELECT count(*) FROM {table}") == ROWS, table
    assert await count(conn, "SELECT count(*) FROM ledger_transactions") == COLLECTED
    assert await count(conn, "SELECT count(*) FROM ledger_entries") == 2 * COLLECTED
    succeeded = "status = 'succeeded' AND method = 'card' AND amount_captured = amount AND tenant = 'acme'"
    assert await count(conn, f"SELECT count(*) FROM payments WHERE {succeeded}") == COLLECTED
    assert await count(conn, "SELECT count(*) FROM payments WHERE destination_account IS NOT NULL") == TOPUPS
    declined = """
        SELECT count(*) FROM payments p JOIN payment_attempts a ON a.payment_id = p.id
        JOIN events e ON e.object_id = p.id
        WHERE p.status = 'failed' AND p.amount_captured = 0 AND p.failure_code = a.decline_code
          AND a.status = 'failed' AND e.type = 'payment.failed'
          AND NOT EXISTS (SELECT FROM ledger_transactions t WHERE t.payment_id = p.id)
    """
    assert await count(conn, declined) == DECLINED
    events = await conn.fetch("SELECT type, count(*) AS n FROM events GROUP BY type")
    assert {r["type"]: r["n"] for r in events} == {"payment.succeeded": COLLECTED, "payment.failed": DECLINED}
    kinds = await conn.fetch("SELECT kind, count(*) AS n FROM ledger_transactions GROUP BY kind")
    assert {r["kind"]: r["n"] for r in kinds} == {
        "payment.collect": COLLECTED - TOPUPS,
        "topup.collect": TOPUPS,
    }
    # The money moves between the gateway's own system accounts and the customers' balances.
    entries = await conn.fetch("SELECT account_id, count(*) AS n FROM ledger_entries GROUP BY account_id")
    per_account = {r["account_id"]: r["n"] for r in entries}
    assert per_account.pop(RECEIVABLE) == COLLECTED
    assert per_account.pop(CLEARING) == COLLECTED - TOPUPS
    assert sum(per_account.values()) == TOPUPS
    assert all(account.startswith("acct_") for account in per_account)
    # Each payment's attempt, ledger transaction and event point at it, one each.
    for table, column, expected in (
        ("payment_attempts", "payment_id", ROWS),
        ("ledger_transactions", "payment_id", COLLECTED),
        ("events", "object_id", ROWS),
    ):
        joined = f"SELECT count(DISTINCT p.id) FROM {table} x JOIN payments p ON p.id = x.{column}"
        assert await count(conn, joined) == expected, table

    await assert_ledger_holds(conn)
    balances = await conn.fetch(BALANCES)
    assert len(balances) == CUSTOMERS
    assert {r["customer_id"] for r in balances} == set(growth.history_customers(CUSTOMERS))

    # Ids: the gateway's shape (prefix + 24 base62), unique.
    for table, prefix in PREFIXES.items():
        misshapen = f"SELECT count(*) FROM {table} WHERE id !~ $1"
        assert await count(conn, misshapen, f"^{prefix}_[A-Za-z0-9]{{24}}$") == 0, table
        distinct = f"SELECT count(DISTINCT id) = count(*) FROM {table}"
        assert await conn.fetchval(distinct), table
    assert all(len(r["id"]) == 29 and r["id"][5:].isalnum() for r in balances)

    # Time: spread over the past ~90 days; the attempt, ledger and event a few ms after the payment.
    oldest, newest = await one(conn, "SELECT min(created), max(created) FROM payments")
    now = datetime.now(UTC)
    assert now - timedelta(days=91) < oldest < now - timedelta(days=85)
    assert now - timedelta(days=1) < newest < now
    late = """
        SELECT count(*) FROM payments p JOIN events e ON e.object_id = p.id
        WHERE e.created < p.created OR e.created > p.created + interval '1 second'
    """
    assert await count(conn, late) == 0
    # Stored responses only within the idempotency retention (older keys are pruned).
    keys = await conn.fetch("SELECT p.created FROM idempotency_keys k JOIN payments p ON p.id = k.object_id")
    assert keys
    assert len(keys) == await count(conn, "SELECT count(*) FROM idempotency_keys")
    assert min(k["created"] for k in keys) > now - timedelta(hours=RETENTION_HOURS + 1)

    # The customers the history queries use are the ones paying.
    customers = {r[0] for r in await conn.fetch("SELECT DISTINCT customer_id FROM payments")}
    assert customers == set(growth.history_customers(CUSTOMERS))

    # The gateway's own reads: a balance (its stored column), a page of history, the event's payment.
    richest = await one(
        conn,
        "SELECT id, customer_id FROM ledger_accounts "
        "WHERE kind = 'customer_balance' ORDER BY available DESC LIMIT 1",
    )
    account = await ledger.get_customer_account(conn, tenant="acme", account_id=richest["id"])
    assert account is not None
    in_entries = "SELECT sum(amount) FROM ledger_entries WHERE account_id = $1"
    assert account.available == await count(conn, in_entries, richest["id"]) > 0
    page, has_more = await payment_store.list_payments(
        conn,
        tenant="acme",
        filters=payment_store.PaymentFilters(customer=richest["customer_id"]),
        limit=5,
        starting_after=None,
        ending_before=None,
    )
    assert has_more
    assert [p.created for p in page] == sorted((p.created for p in page), reverse=True)
    assert orjson.loads(page[0].payment_method)["type"] == "card"
    event = await one(conn, "SELECT data::text FROM events WHERE object_id = $1", page[0].id)
    data = orjson.loads(event["data"])
    # The newest payment may be one of the preload's declines: its event carries the same status.
    assert (data["id"], data["amount"], data["status"]) == (page[0].id, page[0].amount, page[0].status)
    assert page[0].status in ("succeeded", "failed")

    # Sizes: payhub's tables, largest first.
    reported = await growth.sizes(db_url)
    names = {name for name, _, _ in reported}
    assert {*PREFIXES, "ledger_entries", "ledger_accounts", "idempotency_keys"} <= names
    totals = [heap + indexes for _, heap, indexes in reported]
    assert totals == sorted(totals, reverse=True)
    assert all(heap > 0 and indexes > 0 for name, heap, indexes in reported if name in PREFIXES)

    # The loader's own check agrees, and the indexes it rebuilt are all back.
    check = await growth.verify(db_url)
    assert check.ok
    assert (check.transactions, check.accounts) == (COLLECTED, CUSTOMERS)
    assert (
        await count(conn, "SELECT count(*) FROM pg_indexes WHERE indexname = 'payments_tenant_created'") == 1
    )


async def test_indexes_come_back_as_they_were(db_url: str, conn: asyncpg.Connection) -> None:
    definitions = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    before = await conn.fetch(definitions)
    stats = await growth.load(db_url, 300, customers=10, batch=100, settle=False)
    assert stats.indexes_rebuilt > 10
    assert await conn.fetch(definitions) == before


async def test_a_second_preload_adds_to_the_same_balances(db_url: str, conn: asyncpg.Connection) -> None:
    total = "SELECT sum(available) FROM ledger_accounts WHERE kind = 'customer_balance'"
    await growth.load(db_url, 400, customers=10, batch=150, settle=False)
    before = await count(conn, total)
    await growth.load(db_url, 400, customers=10, batch=150, settle=False)
    assert await count(conn, "SELECT count(*) FROM ledger_accounts WHERE kind = 'customer_balance'") == 10
    assert await count(conn, "SELECT count(*) FROM payments") == 800
    assert await count(conn, total) > before
    await assert_ledger_holds(conn)


async def test_with_the_triggers_on_the_database_itself_accepts_the_rows(
    db_url: str, conn: asyncpg.Connection
) -> None:
    """The deferred balance check and the foreign keys run at commit and the balance trigger keeps
    the balances: the same rows, vouched for by the schema instead of by the loader."""
    stats = await growth.load(db_url, 300, customers=10, batch=100, settle=False, skip_triggers=False)
    assert not stats.replica
    assert await count(conn, "SELECT count(*) FROM ledger_entries") == 2 * (300 - 300 // growth.MIX)
    await assert_ledger_holds(conn)


async def test_a_failed_load_leaves_nothing_behind(db_url: str, conn: asyncpg.Connection) -> None:
    definitions = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    before = await conn.fetch(definitions)
    # A payment id the preload will also write: the primary key refuses the batch, the load rolls back.
    taken = growth.new_ids("pay", 1)[0]

    def clashing(prefix: str, count: int, created_us: Sequence[int] | None = None) -> list[str]:
        ids = original(prefix, count, created_us)
        return [taken, *ids[1:]] if prefix == "pay" else ids

    original = growth.new_ids
    await conn.execute(
        "INSERT INTO payments (id, tenant, status, amount, currency, method, payment_method, capture_method) "
        "VALUES ($1, 'acme', 'new', 100, 'CNY', 'card', '{}', 'automatic')",
        taken,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(growth, "new_ids", clashing)
        with pytest.raises(asyncpg.UniqueViolationError):
            await growth.load(db_url, 300, customers=10, batch=100, settle=False)
    assert await count(conn, "SELECT count(*) FROM payments") == 1
    assert await count(conn, "SELECT count(*) FROM ledger_entries") == 0
    assert await count(conn, "SELECT count(*) FROM ledger_accounts") == 0
    assert await conn.fetch(definitions) == before


def test_ids_look_like_the_gateways() -> None:
    times = [1_765_000_000_000_000 + 1000 * n for n in range(10_000)]  # one per ms, oldest first
    ids = growth.new_ids("pay", 10_000, times)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 28 and i.startswith("pay_") and i[4:].isalnum() and i.isascii() for i in ids)
    assert ids == sorted(ids)  # in creation order, as the gateway's
    assert [i[4:13] for i in ids[:2]] == [time_part(times[0] // 1000), time_part(times[1] // 1000)]
    assert len({c for i in ids for c in i[13:]}) == 62  # every base62 character turns up
    assert re.fullmatch(r"pay_[0-9a-z]{9}[A-Za-z0-9]{15}", new_id("pay"))
    tokens = growth.new_ids("tok", 1000)  # vault token ids: 24 random characters
    assert len({c for t in tokens for c in t[4:13]}) == 62
