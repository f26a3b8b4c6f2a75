"""Ledger invariants enforced by PostgreSQL: balanced transactions, no overdraft, O(1) balances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.store.ledger import (
    InsufficientFunds,
    Move,
    Posting,
    SystemAccount,
    create_customer_account,
    get_customer_account,
    list_entries,
    post,
)


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


def card_source(tenant: str = "acme") -> SystemAccount:
    return SystemAccount(tenant, "connector_receivable", "inprocess", "CNY")


async def fund(conn: asyncpg.Connection, account: str, amount: int) -> None:
    await post(conn, Posting("acme", "topup", [Move(card_source(), account, amount, "CNY")]))


async def test_posting_moves_balances_and_keeps_entries(conn: asyncpg.Connection) -> None:
    account = await create_customer_account(
        conn, tenant="acme", currency="CNY", customer_id="cus_1", metadata="{}"
    )
    await fund(conn, account.id, 5000)
    clearing = SystemAccount("acme", "tenant_clearing", "default", "CNY")
    await post(conn, Posting("acme", "payment", [Move(account.id, clearing, 1200, "CNY")]))
    after = await get_customer_account(conn, tenant="acme", account_id=account.id)
    assert after is not None and after.available == 3800
    entries = await list_entries(conn, account_id=account.id, limit=10, before_id=None, after_id=None)
    assert [e.amount for e in entries] == [-1200, 5000]
    total = await conn.fetchval("SELECT sum(amount) FROM ledger_entries")
    assert total == 0
    clearing_sum = await conn.fetchval(
        "SELECT sum(amount) FROM ledger_entries WHERE account_id = $1", clearing.id
    )
    assert clearing_sum == 1200


async def test_overdraft_is_refused_by_the_database(conn: asyncpg.Connection) -> None:
    account = await create_customer_account(
        conn, tenant="acme", currency="CNY", customer_id=None, metadata="{}"
    )
    await fund(conn, account.id, 100)
    with pytest.raises(InsufficientFunds):
        async with conn.transaction():
            clearing = SystemAccount("acme", "tenant_clearing", "default", "CNY")
            await post(conn, Posting("acme", "payment", [Move(account.id, clearing, 101, "CNY")]))
    after = await get_customer_account(conn, tenant="acme", account_id=account.id)
    assert after is not None and after.available == 100


async def test_unbalanced_or_cross_currency_entries_are_refused(conn: asyncpg.Connection) -> None:
    account = await create_customer_account(
        conn, tenant="acme", currency="CNY", customer_id=None, metadata="{}"
    )
    await fund(conn, account.id, 100)
    with pytest.raises(asyncpg.CheckViolationError, match="not balanced"):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ledger_transactions (id, tenant, kind) VALUES ('ltx_x', 'acme', 'bad')"
            )
            await conn.execute(
                "INSERT INTO ledger_entries (transaction_id, account_id, amount, currency) "
                "VALUES ('ltx_x', $1, 5, 'CNY')",
                account.id,
            )
    with pytest.raises(asyncpg.CheckViolationError, match="does not match"):
        receivable = SystemAccount("acme", "connector_receivable", "x", "USD")
        await post(conn, Posting("acme", "topup", [Move(receivable, account.id, 5, "USD")]))
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute("UPDATE ledger_entries SET amount = amount * 2")


async def test_concurrent_spends_never_overdraw(db_url: str, conn: asyncpg.Connection) -> None:
    account = await create_customer_account(
        conn, tenant="acme", currency="CNY", customer_id=None, metadata="{}"
    )
    await fund(conn, account.id, 1000)
    clearing = SystemAccount("acme", "tenant_clearing", "default", "CNY")
    conns = [await asyncpg.connect(db_url) for _ in range(10)]

    async def spend(c: asyncpg.Connection) -> bool:
        try:
            async with c.transaction():
                await post(c, Posting("acme", "payment", [Move(account.id, clearing, 300, "CNY")]))
        except InsufficientFunds:
            return False
        return True

    try:
        results = await asyncio.gather(*(spend(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    assert results.count(True) == 3
    after = await get_customer_account(conn, tenant="acme", account_id=account.id)
    assert after is not None and after.available == 100
    assert (
        await conn.fetchval("SELECT sum(amount) FROM ledger_entries WHERE account_id = $1", account.id) == 100
    )
