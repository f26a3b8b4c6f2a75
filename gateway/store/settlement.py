"""Phase 3 of a payment in one statement (issue #13): the guarded update of the payment and its
attempt, the ledger posting, the bill's post attempt, the decline count, the events, the audit row
and the stored response — one round trip, atomic by itself (no BEGIN/COMMIT needed).

The caller renders the response from the row it knows plus the update, before the statement runs;
the statement writes only while the payment is still that row version (``xmin``), so what was
rendered is what is stored. When the row changed meanwhile nothing is written and the caller reads
it again (:class:`Stale`). When the attempt was settled by someone else first, or the state machine
refuses the move, at most the attempt is updated and nothing else is written (``applied`` false).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import asyncpg
import orjson

from gateway.domain.payment_state import Status, sources
from gateway.store.compose import shift
from gateway.store.ledger import InsufficientFunds, Posting, insufficient_funds
from gateway.store.outcomes import OutcomeRecord
from gateway.store.payments import PAYMENT_COLUMNS, PAYMENT_SET, Payment, PaymentUpdate, settle_attempt_cte
from gateway.store.risk import decline_cte
from gateway.store.types import Connection

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Known:
    """A payments row and its row version (``xmin``) as the caller last read or wrote it."""

    row: Payment
    version: str
    uncommitted: bool = False  # written by the caller's open transaction: nobody else can change it


def keep(new: _T | None, old: _T) -> _T:
    return old if new is None else new


def applied(row: Payment, update: PaymentUpdate, updated: datetime) -> Payment:
    """The row after ``update`` — the SET clause of the statement below, in Python."""

    return dataclasses.replace(
        row,
        status=keep(update.status, row.status),
        amount_authorized=keep(update.amount_authorized, row.amount_authorized),
        amount_captured=keep(update.amount_captured, row.amount_captured),
        connector_reference=keep(update.connector_reference, row.connector_reference),
        next_action=update.next_action,
        failure_code=update.failure_code,
        failure_message=update.failure_message,
        bill_posting=keep(update.bill_posting, row.bill_posting),
        amount_refunded=keep(update.amount_refunded, row.amount_refunded),
        risk=keep(update.risk, row.risk),
        updated=updated,
    )


@dataclass(frozen=True, slots=True)
class BillAttempt:
    """The posting attempt recorded with a bill payment's collection."""

    id: str
    biller: str
    amount: int


@dataclass(frozen=True, slots=True)
class Settlement:
    known: Known
    update: PaymentUpdate
    updated: datetime  # the row's new ``updated``: the rendered response shows it
    attempt_id: str  # '' when the outcome has no attempt
    attempt_status: str
    bill_posting_from: Sequence[str] | None
    posting: Posting | None
    bill_attempt: BillAttempt | None
    count_decline: bool  # PostgreSQL velocity counters count a decline under the payment's keys
    extra_events: Sequence[tuple[str, str]]  # (event id, type), the same data as the record's event
    record: OutcomeRecord


@dataclass(frozen=True, slots=True)
class Settled:
    applied: bool  # the update and everything with it were written
    audit_seq: int | None


_SETTLE = f"""
WITH {settle_attempt_cte(10, 6)}, known AS (
    -- Locked after the attempt: the order callbacks and the resolver lock in. A row version other than
    -- the rendered one raises (40001): nothing of this statement is written, the caller reads again.
    SELECT id, payhub_unchanged(xmin::text = $3) FROM payments
    WHERE id = $1 AND tenant = $2 AND ($14 = '' OR EXISTS (SELECT 1 FROM attempt))
    FOR UPDATE
), payment AS (
    UPDATE payments
    SET {shift(PAYMENT_SET, 1)},
        risk = coalesce($48::jsonb, risk),
        updated = $20
    WHERE id = (SELECT id FROM known)
      AND ($4::text IS NULL OR status = ANY($16::text[]))
      AND ($19::text[] IS NULL OR coalesce(bill_posting->>'status', 'none') = ANY($19::text[]))
    RETURNING id
), accounts AS (
    INSERT INTO ledger_accounts (id, tenant, kind, currency, reference)
    SELECT a.id, $2, a.kind, a.currency, a.reference
    FROM unnest($23::text[], $24::text[], $25::text[], $26::text[]) AS a(id, kind, currency, reference)
    WHERE EXISTS (SELECT 1 FROM payment)
    ON CONFLICT (id) DO NOTHING
), tx AS (
    INSERT INTO ledger_transactions (id, tenant, kind, payment_id)
    SELECT $21, $2, $22, $1 FROM payment WHERE $21::text IS NOT NULL
), entries AS (
    INSERT INTO ledger_entries (transaction_id, account_id, bucket, amount, currency)
    SELECT $21, e.account_id, e.bucket, e.amount, e.currency
    FROM unnest($27::text[], $28::text[], $29::bigint[], $30::text[])
        AS e(account_id, bucket, amount, currency)
    WHERE $21::text IS NOT NULL AND EXISTS (SELECT 1 FROM payment)
), bill_attempt AS (
    INSERT INTO payment_attempts (id, payment_id, tenant, operation, connector, amount, status)
    SELECT $31, $1, $2, 'post_bill', $32, $33, 'started' FROM payment WHERE $31::text IS NOT NULL
), {decline_cte("$1", "$34 AND EXISTS (SELECT 1 FROM payment)")}, extra AS (
    INSERT INTO events (id, tenant, type, object_id, data)
    SELECT x.id, $2, x.type, $1, $39::jsonb
    FROM unnest($35::text[], $36::text[]) AS x(id, type)
    WHERE EXISTS (SELECT 1 FROM payment)
), event AS (
    INSERT INTO events (id, tenant, type, object_id, data) SELECT $37, $2, $38, $1, $39::jsonb FROM payment
), audit AS (
    INSERT INTO audit_events (tenant, actor, action, outcome, source, object, details)
    SELECT $2, $40, $41, $42, $43, $1, $44::jsonb FROM payment
    RETURNING seq
), response AS (
    UPDATE idempotency_keys
    SET response_status = $45, response_body = $46, locked_until = NULL, finished = now(),
        recovery_point = 'finished'
    WHERE $47::text IS NOT NULL AND tenant = $2 AND key = $47 AND EXISTS (SELECT 1 FROM payment)
)
SELECT (SELECT seq FROM audit) AS seq
"""  # noqa: S608 - fixed fragments


class Stale(Exception):
    """The payment changed since it was read: nothing was written; read it again."""


async def settle(conn: Connection, s: Settlement) -> Settled:
    """Run the settlement; Stale if the payment is no longer the known row, InsufficientFunds if its
    posting would overdraw a customer balance. Inside a transaction it runs in a savepoint, so that
    transaction survives either, unless the transaction wrote the row itself (nobody else sees it)."""
    if conn.is_in_transaction() and not s.known.uncommitted:
        try:
            async with conn.transaction():
                return await _settle(conn, s)
        except asyncpg.SerializationError as exc:
            raise Stale from exc
    try:
        return await _settle(conn, s)
    except asyncpg.SerializationError as exc:
        raise Stale from exc


async def _settle(conn: Connection, s: Settlement) -> Settled:
    update, record, posting = s.update, s.record, s.posting
    accounts = posting.accounts() if posting is not None else ([], [], [], [])
    entries = posting.entries() if posting is not None else ([], [], [], [])
    bill = s.bill_attempt
    try:
        row = await conn.fetchrow(
            _SETTLE,
            s.known.row.id,
            s.known.row.tenant,
            s.known.version,
            update.status,
            update.amount_authorized,
            update.connector_reference,
            update.next_action,
            update.failure_code,
            update.failure_message,
            s.attempt_status,
            update.failure_code,  # the attempt's decline code
            None,  # raw code
            1.0,  # a pending or unknown attempt is asked about again in a second
            s.attempt_id,
            update.amount_captured,
            sorted(sources(Status(update.status))) if update.status is not None else [],
            update.bill_posting,
            update.amount_refunded,
            list(s.bill_posting_from) if s.bill_posting_from is not None else None,
            s.updated,
            posting.id if posting is not None else None,
            posting.kind if posting is not None else None,
            *accounts,
            *entries,
            bill.id if bill is not None else None,
            bill.biller if bill is not None else None,
            bill.amount if bill is not None else None,
            s.count_decline,
            [event_id for event_id, _ in s.extra_events],
            [type_ for _, type_ in s.extra_events],
            record.event_id,
            record.event_type,
            record.body.decode(),
            record.actor,
            record.action,
            record.outcome,
            record.source,
            orjson.dumps(record.details).decode(),
            record.status,
            record.body,
            record.idempotency_key,
            update.risk,
        )
    except asyncpg.CheckViolationError as exc:
        if insufficient_funds(exc):
            raise InsufficientFunds from exc
        raise
    assert row is not None
    seq = row["seq"]
    return Settled(applied=seq is not None, audit_seq=seq)


async def read(conn: Connection, *, tenant: str, payment_id: str) -> Known | None:
    """The payment and its row version, for a settlement."""
    record = await conn.fetchrow(
        f"SELECT {PAYMENT_COLUMNS}, xmin::text FROM payments WHERE id = $1 AND tenant = $2",  # noqa: S608
        payment_id,
        tenant,
    )
    return Known(Payment.of(record), record[-1]) if record is not None else None
