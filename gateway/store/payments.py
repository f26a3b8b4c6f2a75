"""Payments, their connector attempts and refunds in PostgreSQL. Every query is tenant-scoped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from gateway.domain.payment_state import Status, sources
from gateway.store.pages import Filters, newest_first
from gateway.store.risk import RiskKeys, count_ctes
from gateway.store.types import Connection

PAYMENT_COLUMNS = """
    id, tenant, status, amount, currency, amount_authorized, amount_captured, amount_refunded, method,
    payment_method::text, capture_method, customer_id, customer::text, biller, bill::text, bill_posting::text,
    description, metadata::text, connector, connector_reference, risk::text, next_action::text,
    failure_code, failure_message, created, updated, destination_account
"""


@dataclass(frozen=True, slots=True)
class Payment:
    """A payments row, in PAYMENT_COLUMNS order. JSON columns stay JSON text (rendered once)."""

    id: str
    tenant: str
    status: str
    amount: int
    currency: str
    amount_authorized: int
    amount_captured: int
    amount_refunded: int
    method: str
    payment_method: str
    capture_method: str
    customer_id: str | None
    customer: str | None
    biller: str | None
    bill: str | None
    bill_posting: str | None
    description: str | None
    metadata: str
    connector: str | None
    connector_reference: str | None
    risk: str | None
    next_action: str | None
    failure_code: str | None
    failure_message: str | None
    created: datetime
    updated: datetime
    destination_account: str | None

    @classmethod
    def of(cls, record: asyncpg.Record) -> Payment:
        return cls(*tuple(record)[:PAYMENT_FIELDS])


PAYMENT_FIELDS = 27


def _payment(record: asyncpg.Record | None) -> Payment | None:
    return Payment.of(record) if record is not None else None


@dataclass(frozen=True, slots=True)
class Attempt:
    """One connector call of a payment (payment_attempts row)."""

    id: str
    payment_id: str
    tenant: str
    operation: str
    connector: str
    amount: int
    status: str
    connector_reference: str | None
    refund_id: str | None
    tries: int
    age: float = 0.0  # seconds since the attempt was made (read by the resolver's claim only)


ATTEMPT_COLUMNS = (
    "id, payment_id, tenant, operation, connector, amount, status, connector_reference, refund_id, tries"
)


def _attempt(record: asyncpg.Record | None) -> Attempt | None:
    return Attempt(*record) if record is not None else None


@dataclass(frozen=True, slots=True)
class Refund:
    id: str
    tenant: str
    payment_id: str
    amount: int
    currency: str
    status: str
    reason: str | None
    failure_code: str | None
    metadata: str
    created: datetime


def _refund(record: asyncpg.Record | None) -> Refund | None:
    return Refund(*record) if record is not None else None


# A new payment's INSERT: parameters $1…$18 in _payment_args order. ``{method}`` is its
# payment_method (a card's token may come from the statement's vault CTE) and ``{source}`` what it
# is selected from (the intake statement inserts it only when it claimed the key).
PAYMENT_INSERT = """
    INSERT INTO payments (id, tenant, status, amount, currency, method, payment_method, capture_method,
                          customer_id, customer, description, metadata, connector, destination_account,
                          biller, bill, risk, held_details, risk_keys)
    SELECT $1, $2, 'new', $3, $4, $5, {method}, $7, $8, $9::jsonb, $10, $11::jsonb, $12, $13,
           $14, $15::jsonb, $16::jsonb, $17::jsonb, $18::jsonb{source}
    RETURNING *, xmin::text AS version"""
PAYMENT_PARAMS = 18

# Both inserts count the payment's velocity keys in the same statement (gateway/store/risk.py):
# a payment is counted once, whatever the retries.
_PAYMENT_CTE = f"""
WITH payment AS ({PAYMENT_INSERT.format(method="$6::jsonb", source="")}
)"""

_INSERT_PAYMENT = f"""{_PAYMENT_CTE}{count_ctes(2, PAYMENT_PARAMS + 1)}
SELECT {PAYMENT_COLUMNS}, version FROM payment
"""  # noqa: S608 - fixed column list

# The first attempt of a payment and the idempotency key's recovery point (so a retry after a crash
# resumes with this attempt id): $19 attempt id, $20 key, $21 recovery point.
ATTEMPT_CTE = """attempt AS (
    INSERT INTO payment_attempts (id, payment_id, tenant, operation, connector, amount, status)
    SELECT $19, payment.id, $2, 'authorize', $12, $3, 'started' FROM payment
)"""

# Phase 1 of a payment in one statement: the payment, its first attempt, and the recovery point. It
# returns the row and its version (xmin): phase 3 settles against exactly that row without reading it.
_START_PAYMENT = f"""{_PAYMENT_CTE}{count_ctes(2, PAYMENT_PARAMS + 4)}
, {ATTEMPT_CTE}, recovery AS (
    UPDATE idempotency_keys SET recovery_point = $21, object_id = $1 WHERE tenant = $2 AND key = $20
)
SELECT {PAYMENT_COLUMNS}, version FROM payment
"""  # noqa: S608 - fixed fragments

_INSERT_ATTEMPT = """
INSERT INTO payment_attempts (id, payment_id, tenant, operation, connector, amount, status, refund_id)
VALUES ($1, $2, $3, $4, $5, $6, 'started', $7)
"""


@dataclass(frozen=True, slots=True)
class NewPayment:
    id: str
    tenant: str
    amount: int
    currency: str
    method: str
    payment_method: str  # JSON text: display data only
    capture_method: str
    customer_id: str | None
    customer: str | None  # JSON text
    description: str | None
    metadata: str  # JSON text
    connector: str | None
    destination_account: str | None = None
    biller: str | None = None
    bill: str | None = None  # JSON text: {"biller", "customer_params", "bill_ref"}
    risk: str | None = None  # JSON text: the risk decision as the API shows it
    held_details: str | None = None  # JSON text: what a held payment's connector call will need
    risk_keys: RiskKeys = field(default_factory=RiskKeys)


def payment_args(payment: NewPayment) -> tuple[object, ...]:
    """The payment's columns in the order both inserts ($1…$18) expect them."""
    return (
        payment.id,
        payment.tenant,
        payment.amount,
        payment.currency,
        payment.method,
        payment.payment_method,
        payment.capture_method,
        payment.customer_id,
        payment.customer,
        payment.description,
        payment.metadata,
        payment.connector,
        payment.destination_account,
        payment.biller,
        payment.bill,
        payment.risk,
        payment.held_details,
        payment.risk_keys.as_json() if payment.risk_keys.pairs else None,
    )


async def insert_payment(conn: Connection, payment: NewPayment) -> tuple[Payment, str]:
    """The payment (and its velocity count) → (the row, its version)."""
    record = await conn.fetchrow(_INSERT_PAYMENT, *payment_args(payment), *payment.risk_keys.args())
    assert record is not None
    return Payment.of(record), record["version"]


async def start_payment(
    conn: Connection, payment: NewPayment, *, attempt_id: str, idempotency_key: str, recovery_point: str
) -> tuple[Payment, str]:
    """Phase 1: the payment, its first attempt, the recovery point → (the row, its version)."""
    record = await conn.fetchrow(
        _START_PAYMENT,
        *payment_args(payment),
        attempt_id,
        idempotency_key,
        recovery_point,
        *payment.risk_keys.args(),
    )
    assert record is not None
    return Payment.of(record), record["version"]


async def fall_back(
    conn: Connection,
    *,
    tenant: str,
    payment_id: str,
    failed_attempt: str,
    attempt_id: str,
    connector: str,
    amount: int,
) -> None:
    """Close an attempt that reached nobody and open the next one at another connector, atomically."""
    await conn.execute(
        """
        WITH failed AS (
            UPDATE payment_attempts SET status = 'failed', decline_code = 'connector_unavailable'
            WHERE id = $3 AND status = 'started'
        ), next AS (
            INSERT INTO payment_attempts (id, payment_id, tenant, operation, connector, amount, status)
            VALUES ($4, $1, $2, 'authorize', $5, $6, 'started')
        )
        UPDATE payments SET connector = $5 WHERE id = $1 AND tenant = $2
        """,
        payment_id,
        tenant,
        failed_attempt,
        attempt_id,
        connector,
        amount,
    )


async def mark_unknown(conn: Connection, *, attempt_id: str, recheck_in: float = 1.0) -> None:
    """The call was sent and no definite answer came: the resolver will ask the connector."""
    await conn.execute(
        """
        UPDATE payment_attempts SET status = 'unknown', next_check = now() + make_interval(secs => $2)
        WHERE id = $1 AND status IN ('started', 'pending')
        """,
        attempt_id,
        recheck_in,
    )


async def insert_attempt(
    conn: Connection,
    *,
    attempt_id: str,
    payment_id: str,
    tenant: str,
    operation: str,
    connector: str,
    amount: int,
    refund_id: str | None = None,
) -> None:
    await conn.execute(
        _INSERT_ATTEMPT, attempt_id, payment_id, tenant, operation, connector, amount, refund_id
    )


@dataclass(frozen=True, slots=True)
class PaymentUpdate:
    status: str | None  # None: the status stays (e.g. a bill payment's posting moves on)
    amount_authorized: int | None = None
    amount_captured: int | None = None
    connector_reference: str | None = None
    next_action: str | None = None  # JSON text; None clears it
    failure_code: str | None = None
    failure_message: str | None = None
    bill_posting: str | None = None  # JSON text; None keeps the current value
    amount_refunded: int | None = None
    risk: str | None = None  # JSON text: the risk decision of a payment recorded before it; None keeps it


def settle_attempt_cte(first: int, reference: int) -> str:
    """``attempt AS (...)``: an in-flight attempt takes its answer, with the placeholders ``$first`` ..
    ``$first+4`` (status, decline code, raw code, seconds to the next check, attempt id) and
    ``$reference`` (the connector's reference, kept when None). It returns the attempt's id only
    while the attempt was still in flight: a second answer changes nothing."""
    status, decline, raw, recheck, attempt = (f"${first + i}" for i in range(5))
    return f"""attempt AS (
    UPDATE payment_attempts
    SET status = {status}, connector_reference = coalesce(${reference}, connector_reference),
        decline_code = {decline}, raw_code = {raw},
        next_check = CASE WHEN {status} IN ('pending', 'unknown')
                          THEN now() + make_interval(secs => {recheck}) END,
        tries = tries + 1
    WHERE id = {attempt} AND status IN ('started', 'pending', 'unknown')
    RETURNING id
)"""  # noqa: S608 - placeholders only


# The payment and the attempt that decided it change in one statement (one round trip), and only
# while the attempt is still in flight and the state machine (gateway.domain.payment_state)
# allows the move from the payment's current status: a callback that settled it first wins, and
# this returns no row (the caller then reports the payment as it stands).
# What an answer sets on the payment (a None keeps the column): the SET list of _APPLY, and of phase 3
# (gateway/store/settlement.py, its parameters one further on).
PAYMENT_SET = """status = coalesce($3, status),
    amount_authorized = coalesce($4, amount_authorized),
    amount_captured = coalesce($14, amount_captured),
    connector_reference = coalesce($5, connector_reference),
    next_action = $6::jsonb,
    failure_code = $7,
    failure_message = $8,
    bill_posting = coalesce($16::jsonb, bill_posting),
    amount_refunded = coalesce($17, amount_refunded)"""

_APPLY = f"""
WITH {settle_attempt_cte(9, 5)}
UPDATE payments
SET {PAYMENT_SET}
WHERE id = $1 AND tenant = $2 AND ($13 = '' OR EXISTS (SELECT 1 FROM attempt))
  AND ($3::text IS NULL OR status = ANY($15::text[]))
  AND ($18::text[] IS NULL OR coalesce(bill_posting->>'status', 'none') = ANY($18::text[]))
RETURNING {PAYMENT_COLUMNS}
"""  # noqa: S608 - fixed column list


async def apply_result(
    conn: Connection,
    *,
    tenant: str,
    payment_id: str,
    update: PaymentUpdate,
    attempt_id: str,
    attempt_status: str,
    decline_code: str | None = None,
    raw_code: str | None = None,
    recheck_in: float = 1.0,
    bill_posting_from: Sequence[str] | None = None,
) -> Payment | None:
    """Apply ``update`` if the attempt is still in flight and the move is legal; None if not.

    ``bill_posting_from`` guards a bill payment's posting state (``none`` = not collected yet).
    """
    row = await conn.fetchrow(
        _APPLY,
        payment_id,
        tenant,
        update.status,
        update.amount_authorized,
        update.connector_reference,
        update.next_action,
        update.failure_code,
        update.failure_message,
        attempt_status,
        decline_code,
        raw_code,
        recheck_in,
        attempt_id,
        update.amount_captured,
        sorted(sources(Status(update.status))) if update.status is not None else [],
        update.bill_posting,
        update.amount_refunded,
        list(bill_posting_from) if bill_posting_from is not None else None,
    )
    return _payment(row)


async def get_payment(
    conn: Connection, *, tenant: str, payment_id: str, lock: bool = False
) -> Payment | None:
    suffix = " FOR UPDATE" if lock else ""
    record = await conn.fetchrow(
        f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND tenant = $2{suffix}",  # noqa: S608
        payment_id,
        tenant,
    )
    return _payment(record)


async def latest_attempt(conn: Connection, *, payment_id: str, operation: str) -> Attempt | None:
    return _attempt(
        await conn.fetchrow(
            f"""
            SELECT {ATTEMPT_COLUMNS}
            FROM payment_attempts WHERE payment_id = $1 AND operation = $2
            ORDER BY created DESC, id DESC LIMIT 1
            """,  # noqa: S608 - fixed column list
            payment_id,
            operation,
        )
    )


@dataclass(frozen=True, slots=True)
class PaymentFilters:
    status: str | None = None
    method: str | None = None
    customer: str | None = None
    biller: str | None = None
    created_gte: datetime | None = None
    created_lte: datetime | None = None
    amount_gte: int | None = None
    amount_lte: int | None = None


def _floor_second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def _ceil_second(value: datetime | None) -> datetime | None:
    if value is None or value.microsecond == 0:
        return value
    return value.replace(microsecond=0) + timedelta(seconds=1)


async def list_payments(
    conn: Connection,
    *,
    tenant: str,
    filters: PaymentFilters,
    limit: int,
    starting_after: str | None,
    ending_before: str | None,
) -> tuple[list[Payment], bool]:
    """Newest first, keyset-paginated on (created, id); returns (page, has_more).

    A cursor that is not the caller's object behaves as if it did not exist (404 upstream).
    """
    where = Filters(tenant)
    where.add("status", "=", filters.status)
    where.add("method", "=", filters.method)
    where.add("customer_id", "=", filters.customer)
    where.add("biller", "=", filters.biller)
    # `created` is shown in whole seconds, so bounds compare at that precision: created_lte=<a
    # payment's own created> includes it. The column stays bare so the index still serves.
    where.add("created", ">=", _ceil_second(filters.created_gte))
    if filters.created_lte is not None:
        where.add("created", "<", _floor_second(filters.created_lte) + timedelta(seconds=1))
    where.add("amount", ">=", filters.amount_gte)
    where.add("amount", "<=", filters.amount_lte)
    rows, has_more = await newest_first(
        conn,
        table="payments",
        columns=PAYMENT_COLUMNS,
        filters=where,
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
    )
    return [Payment.of(row) for row in rows], has_more


REFUND_COLUMNS = (
    "id, tenant, payment_id, amount, currency, status, reason, failure_code, metadata::text, created"
)


async def get_refund(conn: Connection, *, tenant: str, refund_id: str) -> Refund | None:
    return _refund(
        await conn.fetchrow(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1 AND tenant = $2",  # noqa: S608
            refund_id,
            tenant,
        )
    )


async def list_refunds(
    conn: Connection,
    *,
    tenant: str,
    payment_id: str | None,
    limit: int,
    starting_after: str | None,
    ending_before: str | None,
) -> tuple[list[Refund], bool]:
    """The tenant's refunds newest first (of one payment when given), keyset-paginated on (created, id)."""
    where = Filters(tenant)
    where.add("payment_id", "=", payment_id)
    rows, has_more = await newest_first(
        conn,
        table="refunds",
        columns=REFUND_COLUMNS,
        filters=where,
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
    )
    return [Refund(*row) for row in rows], has_more


async def insert_event(
    conn: Connection, *, event_id: str, tenant: str, type_: str, object_id: str, data: str
) -> None:
    await conn.execute(
        "INSERT INTO events (id, tenant, type, object_id, data) VALUES ($1, $2, $3, $4, $5::jsonb)",
        event_id,
        tenant,
        type_,
        object_id,
        data,
    )


async def claim_status(
    conn: Connection, *, tenant: str, payment_id: str, allowed: Sequence[str], target: str
) -> tuple[Payment, str] | None:
    """Move the payment from one of ``allowed`` to ``target`` if it is still there; None if not.

    Returns the payment and its previous status, so a caller can undo the claim.

    This single conditional UPDATE is what serializes concurrent captures/cancels of one payment:
    only one of them finds the old status and may call the connector.
    """
    row = await conn.fetchrow(
        f"""
        WITH old AS (
            SELECT id AS old_id, status AS previous_status FROM payments
            WHERE id = $1 AND tenant = $2 AND status = ANY($4::text[]) FOR UPDATE
        )
        UPDATE payments SET status = $3 FROM old WHERE payments.id = old.old_id
        RETURNING {PAYMENT_COLUMNS}, old.previous_status
        """,  # noqa: S608 - fixed column list
        payment_id,
        tenant,
        target,
        list(allowed),
    )
    return (Payment.of(row), row["previous_status"]) if row is not None else None


async def reserve_refund(
    conn: Connection, *, tenant: str, payment_id: str, amount: int, statuses: Sequence[str] = ("succeeded",)
) -> Payment | None:
    """Add ``amount`` to amount_refunded if the payment succeeded and it stays ≤ amount_captured.

    The row lock taken by the UPDATE serializes concurrent refunds of one payment, and the
    table's CHECK backs the WHERE clause: refunded can never exceed captured.
    """
    row = await conn.fetchrow(
        f"""
        UPDATE payments SET amount_refunded = amount_refunded + $3
        WHERE id = $1 AND tenant = $2 AND status = ANY($4::text[]) AND amount_refunded + $3 <= amount_captured
        RETURNING {PAYMENT_COLUMNS}
        """,  # noqa: S608 - fixed column list
        payment_id,
        tenant,
        amount,
        list(statuses),
    )
    return _payment(row)


async def lock_refund(conn: Connection, *, tenant: str, refund_id: str) -> Refund | None:
    return _refund(
        await conn.fetchrow(
            f"SELECT {REFUND_COLUMNS} FROM refunds WHERE id = $1 AND tenant = $2 FOR UPDATE",  # noqa: S608
            refund_id,
            tenant,
        )
    )


async def refund_attempt(conn: Connection, *, refund_id: str) -> Attempt | None:
    return _attempt(
        await conn.fetchrow(
            f"SELECT {ATTEMPT_COLUMNS} FROM payment_attempts WHERE refund_id = $1",  # noqa: S608
            refund_id,
        )
    )


async def settle_refund_attempt(
    conn: Connection, *, refund_id: str, status: str, reference: str | None
) -> None:
    """A refund's attempt ends with its refund (pending: the resolver asks again at its back-off)."""
    await conn.execute(
        """
        UPDATE payment_attempts
        SET status = CASE WHEN $2 = 'pending' THEN 'unknown' ELSE $2 END,
            connector_reference = coalesce($3, connector_reference),
            next_check = CASE WHEN $2 = 'pending' THEN now() + interval '1 second' END
        WHERE refund_id = $1 AND status IN ('started', 'pending', 'unknown')
        """,
        refund_id,
        status,
        reference,
    )


async def release_refund(conn: Connection, *, tenant: str, payment_id: str, amount: int) -> None:
    await conn.execute(
        "UPDATE payments SET amount_refunded = amount_refunded - $3 WHERE id = $1 AND tenant = $2",
        payment_id,
        tenant,
        amount,
    )


async def insert_refund(
    conn: Connection,
    *,
    refund_id: str,
    tenant: str,
    payment_id: str,
    amount: int,
    currency: str,
    reason: str | None,
    metadata: str,
) -> None:
    await conn.execute(
        """
        INSERT INTO refunds (id, tenant, payment_id, amount, currency, status, reason, metadata)
        VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7::jsonb)
        """,
        refund_id,
        tenant,
        payment_id,
        amount,
        currency,
        reason,
        metadata,
    )


async def finish_refund(
    conn: Connection,
    *,
    tenant: str,
    refund_id: str,
    status: str,
    reference: str | None,
    failure_code: str | None,
) -> Refund:
    row = _refund(
        await conn.fetchrow(
            f"""
        UPDATE refunds SET status = $3, connector_reference = $4, failure_code = $5
        WHERE id = $1 AND tenant = $2
        RETURNING {REFUND_COLUMNS}
        """,  # noqa: S608 - fixed column list
            refund_id,
            tenant,
            status,
            reference,
            failure_code,
        )
    )
    assert row is not None
    return row


# ---- attempts: what the resolver, callbacks and the bill flow ask of them ----------------------------

_DUE = f"""
WITH due AS (
    SELECT id FROM payment_attempts
    WHERE status IN ('started', 'pending', 'unknown') AND next_check <= now()
    ORDER BY next_check LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE payment_attempts a SET next_check = now() + interval '30 seconds', tries = a.tries + 1
FROM due
WHERE a.id = due.id
RETURNING {", ".join("a." + column for column in ATTEMPT_COLUMNS.split(", "))},
    extract(epoch FROM now() - a.created)::float8
"""  # noqa: S608 - fixed column list


async def claim_due_attempts(conn: Connection, *, limit: int) -> list[Attempt]:
    """Attempts whose next check has come, pushed 30 s forward so no other process takes them meanwhile."""
    return [Attempt(*row) for row in await conn.fetch(_DUE, limit)]


async def oldest_processing_age(conn: Connection) -> float:
    """Seconds since the longest-waiting ``processing`` payment last moved, across tenants (0: none).

    For the operator metric and its alert (stuck payments). Not counted: a bank transfer, which waits
    on the payer within its connector's budget (24 h by default), and a payment whose attempt is in
    the manual queue (its own gauge and alert). A walk of the partial index ``payments_processing``
    from the oldest; the status is a literal, not a parameter, so that even a generic prepared plan
    can use that index.
    """
    age = await conn.fetchval(
        """
        SELECT extract(epoch FROM now() - p.updated)::float8 FROM payments p
        WHERE p.status = 'processing' AND p.method <> 'bank_transfer' AND NOT EXISTS (
            SELECT FROM payment_attempts a
            WHERE a.payment_id = p.id AND a.manual_review_since IS NOT NULL
              AND a.status IN ('started', 'pending', 'unknown')
        )
        ORDER BY p.updated LIMIT 1
        """
    )
    return max(float(age), 0.0) if age is not None else 0.0


async def recheck_later(conn: Connection, *, attempt_id: str, delay: float) -> None:
    """The next look at an attempt still in flight (never at one in the manual queue)."""
    await conn.execute(
        "UPDATE payment_attempts SET next_check = now() + make_interval(secs => $2) "
        "WHERE id = $1 AND status IN ('started', 'pending', 'unknown') AND manual_review_since IS NULL",
        attempt_id,
        delay,
    )


async def screened_out(
    conn: Connection,
    *,
    tenant: str,
    payment_id: str,
    attempt_id: str,
    risk: str | None,
    held_details: str | None,
) -> None:
    """A payment recorded before its risk decision, held or blocked by it: its first attempt, never
    sent, ends (the resolver must not ask about it); the payment keeps its decision and what a
    released connector call needs."""
    await conn.execute(
        """
        WITH attempt AS (
            UPDATE payment_attempts SET status = 'failed', decline_code = 'risk_decision', next_check = NULL
            WHERE id = $3 AND payment_id = $2 AND status = 'started'
        )
        UPDATE payments SET risk = $4::jsonb, held_details = $5::jsonb WHERE id = $2 AND tenant = $1
        """,
        tenant,
        payment_id,
        attempt_id,
        risk,
        held_details,
    )


async def end_attempt(conn: Connection, *, attempt_id: str, status: str) -> None:
    """Close an attempt still in flight with a final status (no further checks)."""
    await conn.execute(
        "UPDATE payment_attempts SET status = $2, next_check = NULL "
        "WHERE id = $1 AND status IN ('started', 'pending', 'unknown')",
        attempt_id,
        status,
    )


async def end_authorizations(conn: Connection, *, payment_id: str, status: str) -> None:
    """Close the payment's authorize attempts still in flight (a wallet order closed by a cancel)."""
    await conn.execute(
        "UPDATE payment_attempts SET status = $2, next_check = NULL "
        "WHERE payment_id = $1 AND operation = 'authorize' AND status IN ('started', 'pending', 'unknown')",
        payment_id,
        status,
    )


async def lock_attempt_status(conn: Connection, *, attempt_id: str) -> str | None:
    status: str | None = await conn.fetchval(
        "SELECT status FROM payment_attempts WHERE id = $1 FOR UPDATE", attempt_id
    )
    return status


@dataclass(frozen=True, slots=True)
class AnsweredAttempt:
    """An attempt a later answer (callback, inquiry) is about, with what applying it needs of its payment."""

    id: str
    payment_id: str
    tenant: str
    operation: str
    amount: int
    status: str
    currency: str
    capture_method: str
    payment_status: str
    amount_authorized: int
    biller: str | None


async def lock_answered_attempt(
    conn: Connection, *, attempt_id: str, connector: str
) -> AnsweredAttempt | None:
    row = await conn.fetchrow(
        """
        SELECT a.id, a.payment_id, a.tenant, a.operation, a.amount, a.status,
               p.currency, p.capture_method, p.status, p.amount_authorized, p.biller
        FROM payment_attempts a JOIN payments p ON p.id = a.payment_id
        WHERE a.id = $1 AND a.connector = $2
        FOR UPDATE OF a
        """,
        attempt_id,
        connector,
    )
    return AnsweredAttempt(*row) if row is not None else None


async def mark_posting_pending(
    conn: Connection, *, tenant: str, payment_id: str, attempt_id: str, posting: str, recheck_in: float
) -> None:
    """A posting sent without a definite answer: the attempt is unknown, the posting pending."""
    await conn.execute(
        """
        WITH attempt AS (
            UPDATE payment_attempts SET status = 'unknown', next_check = now() + make_interval(secs => $5)
            WHERE id = $3 AND status IN ('started', 'pending', 'unknown')
        )
        UPDATE payments SET bill_posting = $4::jsonb
        WHERE id = $1 AND tenant = $2 AND bill_posting->>'status' = 'posting'
        """,
        payment_id,
        tenant,
        attempt_id,
        posting,
        recheck_in,
    )


async def to_manual_review(
    conn: Connection, *, tenant: str, payment_id: str, attempt_id: str, reason: str, posting: str | None
) -> bool:
    """Put an attempt no automatic step can settle in the operators' manual queue (no more polling).

    The attempt stays in flight, so a late definite answer still settles it. A bill payment's
    posting moves to ``manual_review`` with it. False when the attempt was settled meanwhile or is
    already queued.
    """
    moved = await conn.fetchval(
        """
        WITH attempt AS (
            UPDATE payment_attempts
            SET next_check = NULL, manual_review_since = now(), manual_review_reason = $4
            WHERE id = $3 AND status IN ('started', 'pending', 'unknown') AND manual_review_since IS NULL
            RETURNING id
        ), posting AS (
            UPDATE payments SET bill_posting = $5::jsonb
            WHERE id = $1 AND tenant = $2 AND $5::jsonb IS NOT NULL AND EXISTS (SELECT FROM attempt)
        )
        SELECT count(*) FROM attempt
        """,
        payment_id,
        tenant,
        attempt_id,
        reason,
        posting,
    )
    return bool(moved)


@dataclass(frozen=True, slots=True)
class ManualReview:
    """An attempt waiting in the manual queue, as operators list it."""

    attempt: Attempt
    currency: str
    reason: str
    since: datetime


_MANUAL_REVIEWS = f"""
SELECT {", ".join("a." + column for column in ATTEMPT_COLUMNS.split(", "))}, 0::float8,
       p.currency, a.manual_review_reason, a.manual_review_since
FROM payment_attempts a JOIN payments p ON p.id = a.payment_id
WHERE a.manual_review_since IS NOT NULL AND a.status IN ('started', 'pending', 'unknown')
  AND ($1::text IS NULL OR a.id = $1)
  AND ($2::timestamptz IS NULL OR (a.manual_review_since, a.id) > ($2, $3))
ORDER BY a.manual_review_since, a.id
LIMIT $4
"""  # noqa: S608 - fixed column list


def _manual_review(row: asyncpg.Record) -> ManualReview:
    return ManualReview(Attempt(*row[:-3]), row[-3], row[-2], row[-1])


async def manual_reviews(
    conn: Connection, *, limit: int, starting_after: tuple[datetime, str] | None = None
) -> list[ManualReview]:
    """The manual queue across tenants, oldest first (operators work it)."""
    since, after = starting_after or (None, None)
    return [_manual_review(row) for row in await conn.fetch(_MANUAL_REVIEWS, None, since, after, limit)]


async def manual_review(conn: Connection, *, attempt_id: str) -> ManualReview | None:
    """One attempt of the manual queue (None when it is not, or no longer, in the queue)."""
    row = await conn.fetchrow(_MANUAL_REVIEWS, attempt_id, None, None, 1)
    return _manual_review(row) if row is not None else None


async def manual_review_size(conn: Connection) -> int:
    """Attempts waiting in the manual queue, across tenants (for the gauge and its alert)."""
    size = await conn.fetchval(
        "SELECT count(*) FROM payment_attempts "
        "WHERE manual_review_since IS NOT NULL AND status IN ('started', 'pending', 'unknown')"
    )
    return int(size)


# A held payment (step-up passed, review approved) goes on to its connector: the move to
# `processing`, its authorize attempt and the key's recovery point in one statement.
_RELEASE_HELD = f"""
WITH moved AS (
    UPDATE payments SET status = 'processing', next_action = NULL, connector = $5
    WHERE id = $1 AND tenant = $2 AND status = ANY($3::text[])
    RETURNING {PAYMENT_COLUMNS}, held_details::text
), attempt AS (
    INSERT INTO payment_attempts (id, payment_id, tenant, operation, connector, amount, status)
    SELECT $4, moved.id, $2, 'authorize', $5, moved.amount, 'started' FROM moved
), recovery AS (
    UPDATE idempotency_keys SET recovery_point = $7, object_id = $1
    WHERE tenant = $2 AND key = $6 AND EXISTS (SELECT 1 FROM moved)
)
SELECT * FROM moved
"""  # noqa: S608 - fixed column list


async def release_held(
    conn: Connection,
    *,
    tenant: str,
    payment_id: str,
    allowed: Sequence[str],
    attempt_id: str,
    connector: str,
    idempotency_key: str | None,
    recovery_point: str,
) -> tuple[Payment, str | None] | None:
    """→ (payment, held_details JSON) if it was held in one of ``allowed``; None if not (any more)."""
    row = await conn.fetchrow(
        _RELEASE_HELD,
        payment_id,
        tenant,
        list(allowed),
        attempt_id,
        connector,
        idempotency_key,
        recovery_point,
    )
    return (Payment.of(row), row["held_details"]) if row is not None else None


async def held_details(conn: Connection, *, payment_id: str) -> str | None:
    details: str | None = await conn.fetchval(
        "SELECT held_details::text FROM payments WHERE id = $1", payment_id
    )
    return details


async def under_review(
    conn: Connection, *, limit: int, starting_after: tuple[datetime, str] | None
) -> list[Payment]:
    """The review queue across tenants, oldest first (operators work it in arrival order)."""
    rows = await conn.fetch(
        f"""
        SELECT {PAYMENT_COLUMNS} FROM payments
        WHERE status = 'under_review' AND ($2::timestamptz IS NULL OR (created, id) > ($2, $3))
        ORDER BY created, id LIMIT $1
        """,  # noqa: S608 - fixed column list
        limit,
        starting_after[0] if starting_after else None,
        starting_after[1] if starting_after else None,
    )
    return [Payment.of(row) for row in rows]


async def get_payment_any_tenant(
    conn: Connection, *, payment_id: str, for_update: bool = False
) -> Payment | None:
    """For operator routes only (they act across tenants): the payment whatever its tenant."""
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(
        f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1{lock}",  # noqa: S608 - fixed column list
        payment_id,
    )
    return Payment.of(row) if row is not None else None
