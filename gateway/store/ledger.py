"""Double-entry ledger: accounts, balanced postings, statements.

A posting is a list of moves (amount from one account to another); each move is two entries
(-amount, +amount), so every transaction sums to zero per currency by construction — and the
database re-checks it at commit. System accounts are created on first use inside the same
statement, so a posting is one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

import asyncpg

from gateway.ids import new_id
from gateway.store.types import Connection

SystemKind = Literal[
    "tenant_clearing", "connector_receivable", "biller_payable", "fees", "fx", "prepaid_issuer"
]
Bucket = Literal["available", "pending"]


class InsufficientFunds(Exception):
    """A customer balance would go below zero (the database refused the posting)."""


@dataclass(frozen=True, slots=True)
class SystemAccount:
    """A contra account of the hub (created on first use): clearing, receivables, payables, fees, FX."""

    tenant: str
    kind: SystemKind
    reference: str  # connector or biller name; "default" for the tenant's clearing account
    currency: str

    @property
    def id(self) -> str:
        return f"sys_{self.tenant}_{self.kind}_{self.reference}_{self.currency}"


AccountRef = str | SystemAccount  # a customer account id (acct_…) or a system account


@dataclass(frozen=True, slots=True)
class Move:
    source: AccountRef
    destination: AccountRef
    amount: int
    currency: str
    source_bucket: Bucket = "available"
    destination_bucket: Bucket = "available"


def _account_id(ref: AccountRef) -> str:
    return ref.id if isinstance(ref, SystemAccount) else ref


_POST = """
WITH accounts AS (
    INSERT INTO ledger_accounts (id, tenant, kind, currency, reference)
    SELECT a.id, $2, a.kind, a.currency, a.reference
    FROM unnest($6::text[], $7::text[], $8::text[], $9::text[]) AS a(id, kind, currency, reference)
    ON CONFLICT (id) DO NOTHING
), tx AS (
    INSERT INTO ledger_transactions (id, tenant, kind, payment_id, refund_id) VALUES ($1, $2, $3, $4, $5)
)
INSERT INTO ledger_entries (transaction_id, account_id, bucket, amount, currency)
SELECT $1, e.account_id, e.bucket, e.amount, e.currency
FROM unnest($10::text[], $11::text[], $12::bigint[], $13::text[]) AS e(account_id, bucket, amount, currency)
"""


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger transaction to write: its moves, and the payment or refund it books."""

    tenant: str
    kind: str
    moves: Sequence[Move]
    payment_id: str | None = None
    refund_id: str | None = None
    id: str = field(default_factory=lambda: new_id("ltx"))

    def accounts(self) -> tuple[list[str], list[str], list[str], list[str]]:
        """The system accounts it touches (created on first use): ids, kinds, currencies, references."""
        system = {
            ref.id: ref
            for move in self.moves
            for ref in (move.source, move.destination)
            if isinstance(ref, SystemAccount)
        }
        refs = system.values()
        return list(system), [r.kind for r in refs], [r.currency for r in refs], [r.reference for r in refs]

    def entries(self) -> tuple[list[str], list[str], list[int], list[str]]:
        """Two entries per move (-amount, +amount): account ids, buckets, amounts, currencies."""
        account: list[str] = []
        bucket: list[str] = []
        amount: list[int] = []
        currency: list[str] = []
        for move in self.moves:
            account += [_account_id(move.source), _account_id(move.destination)]
            bucket += [move.source_bucket, move.destination_bucket]
            amount += [-move.amount, move.amount]
            currency += [move.currency, move.currency]
        return account, bucket, amount, currency


def insufficient_funds(exc: asyncpg.CheckViolationError) -> bool:
    """Whether the database refused a posting because a customer balance would go negative."""
    return exc.constraint_name == "ledger_accounts_check"


async def post(conn: Connection, posting: Posting) -> str:
    """Record the posting as one ledger transaction; InsufficientFunds if a customer balance would
    go negative. Call inside a transaction (or savepoint) that the caller rolls back on InsufficientFunds.
    """
    try:
        await conn.execute(
            _POST,
            posting.id,
            posting.tenant,
            posting.kind,
            posting.payment_id,
            posting.refund_id,
            *posting.accounts(),
            *posting.entries(),
        )
    except asyncpg.CheckViolationError as exc:
        if insufficient_funds(exc):
            raise InsufficientFunds from exc
        raise
    return posting.id


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    tenant: str
    currency: str
    customer_id: str | None
    available: int
    pending: int
    metadata: str
    created: datetime


_ACCOUNT_COLUMNS = "id, tenant, currency, customer_id, available, pending, metadata::text, created"


async def create_customer_account(
    conn: Connection, *, tenant: str, currency: str, customer_id: str | None, metadata: str
) -> Account:
    row = await conn.fetchrow(
        f"""
        INSERT INTO ledger_accounts (id, tenant, kind, currency, customer_id, metadata)
        VALUES ($1, $2, 'customer_balance', $3, $4, $5::jsonb)
        RETURNING {_ACCOUNT_COLUMNS}
        """,  # noqa: S608 - fixed column list
        new_id("acct"),
        tenant,
        currency,
        customer_id,
        metadata,
    )
    assert row is not None
    return Account(*row)


async def get_customer_account(conn: Connection, *, tenant: str, account_id: str) -> Account | None:
    row = await conn.fetchrow(
        f"SELECT {_ACCOUNT_COLUMNS} FROM ledger_accounts "  # noqa: S608 - fixed column list
        "WHERE id = $1 AND tenant = $2 AND kind = 'customer_balance'",
        account_id,
        tenant,
    )
    return Account(*row) if row else None


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    transaction_id: str
    kind: str
    payment_id: str | None
    refund_id: str | None
    bucket: str
    amount: int
    currency: str
    created: datetime


async def list_entries(
    conn: Connection, *, account_id: str, limit: int, before_id: int | None, after_id: int | None
) -> list[Entry]:
    """Statement lines newest first; keyset pagination on the entry id."""
    if after_id is not None:  # ending_before: the page just newer than the cursor, returned newest first
        rows = await conn.fetch(
            """
            SELECT * FROM (
                SELECT e.id, e.transaction_id, t.kind, t.payment_id, t.refund_id,
                       e.bucket, e.amount, e.currency, e.created
                FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
                WHERE e.account_id = $1 AND e.id > $2 ORDER BY e.id ASC LIMIT $3
            ) page ORDER BY id DESC
            """,
            account_id,
            after_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            """
            SELECT e.id, e.transaction_id, t.kind, t.payment_id, t.refund_id,
                       e.bucket, e.amount, e.currency, e.created
            FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
            WHERE e.account_id = $1 AND ($2::bigint IS NULL OR e.id < $2)
            ORDER BY e.id DESC LIMIT $3
            """,
            account_id,
            before_id,
            limit,
        )
    return [Entry(*row) for row in rows]


async def entry_exists(conn: Connection, *, account_id: str, entry_id: int) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ledger_entries WHERE account_id = $1 AND id = $2)",
            account_id,
            entry_id,
        )
    )


async def has_transaction(conn: Connection, *, payment_id: str, kind: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM ledger_transactions WHERE payment_id = $1 AND kind = $2)",
            payment_id,
            kind,
        )
    )
