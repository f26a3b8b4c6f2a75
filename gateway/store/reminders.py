"""Reminders (bill due dates, low balances), the notices they gave, and the message outbox.

Every read and write of a reminder is tenant-scoped. The scheduler and the message sender claim
work with ``FOR UPDATE SKIP LOCKED`` under a lease (the claim moves ``next_run`` / ``not_before``
forward and commits), so any number of processes can run them; a notice is recorded together with
its event in one statement, and its primary key makes a bill noticed once per reminder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson

from gateway.domain.notifications import Preferences
from gateway.store.pages import Filters, newest_first
from gateway.store.preferences import preferences_of
from gateway.store.types import Connection


class LowBalanceExists(Exception):
    """The account already has an active low-balance reminder."""


@dataclass(frozen=True, slots=True)
class Reminder:
    id: str
    tenant: str
    customer_id: str | None
    type: str
    biller: str | None
    customer_params: dict[str, str] | None
    lead_days: int | None
    next_run: datetime | None
    account_id: str | None
    threshold: int | None
    currency: str | None
    status: str
    created: datetime


REMINDER_COLUMNS = (
    "id, tenant, customer_id, type, biller, customer_params::text AS customer_params, lead_days, "
    "next_run, account_id, threshold, currency, status, created"
)


def _reminder(row: asyncpg.Record) -> Reminder:
    params = row["customer_params"]
    return Reminder(
        id=row["id"],
        tenant=row["tenant"],
        customer_id=row["customer_id"],
        type=row["type"],
        biller=row["biller"],
        customer_params=orjson.loads(params) if params is not None else None,
        lead_days=row["lead_days"],
        next_run=row["next_run"],
        account_id=row["account_id"],
        threshold=row["threshold"],
        currency=row["currency"],
        status=row["status"],
        created=row["created"],
    )


async def create_bill_reminder(
    conn: Connection,
    *,
    reminder_id: str,
    tenant: str,
    customer_id: str,
    biller: str,
    customer_params: Mapping[str, str],
    lead_days: int | None,
    next_run: datetime,
) -> Reminder:
    row = await conn.fetchrow(
        f"""
        INSERT INTO reminders (id, tenant, customer_id, type, biller, customer_params, lead_days, next_run)
        VALUES ($1, $2, $3, 'bill_due', $4, $5::jsonb, $6, $7)
        RETURNING {REMINDER_COLUMNS}
        """,  # noqa: S608 - fixed column list
        reminder_id,
        tenant,
        customer_id,
        biller,
        orjson.dumps(dict(customer_params)).decode(),
        lead_days,
        next_run,
    )
    assert row is not None
    return _reminder(row)


async def create_low_balance_reminder(
    conn: Connection,
    *,
    reminder_id: str,
    tenant: str,
    customer_id: str | None,
    account_id: str,
    threshold: int,
) -> Reminder | None:
    """Put the threshold on the tenant's account and record the reminder, in one transaction.

    None when the account is not one of the tenant's customer balances; LowBalanceExists when it
    already has a low-balance reminder. The customer defaults to the account's.
    """
    async with conn.transaction():
        account = await conn.fetchrow(
            """
            UPDATE ledger_accounts SET low_balance_threshold = $3
            WHERE id = $1 AND tenant = $2 AND kind = 'customer_balance'
            RETURNING customer_id, currency
            """,
            account_id,
            tenant,
            threshold,
        )
        if account is None:
            return None
        try:
            row = await conn.fetchrow(
                f"""
                INSERT INTO reminders (id, tenant, customer_id, type, account_id, threshold, currency)
                VALUES ($1, $2, $3, 'low_balance', $4, $5, $6)
                RETURNING {REMINDER_COLUMNS}
                """,  # noqa: S608 - fixed column list
                reminder_id,
                tenant,
                customer_id if customer_id is not None else account["customer_id"],
                account_id,
                threshold,
                account["currency"],
            )
        except asyncpg.UniqueViolationError as exc:
            raise LowBalanceExists from exc
    assert row is not None
    return _reminder(row)


async def get(conn: Connection, *, tenant: str, reminder_id: str) -> Reminder | None:
    """An active reminder of the tenant (a deleted one is gone, as Stripe's deleted objects are)."""
    row = await conn.fetchrow(
        f"SELECT {REMINDER_COLUMNS} FROM reminders "  # noqa: S608 - fixed column list
        "WHERE id = $1 AND tenant = $2 AND status = 'active'",
        reminder_id,
        tenant,
    )
    return _reminder(row) if row is not None else None


async def exists(conn: Connection, *, tenant: str, reminder_id: str) -> bool:
    return bool(
        await conn.fetchval("SELECT 1 FROM reminders WHERE id = $1 AND tenant = $2", reminder_id, tenant)
    )


async def list_active(
    conn: Connection,
    *,
    tenant: str,
    customer_id: str | None,
    limit: int,
    starting_after: str | None,
    ending_before: str | None,
) -> tuple[list[Reminder], bool]:
    where = Filters(tenant)
    where.conditions.append("status = 'active'")
    where.add("customer_id", "=", customer_id)
    rows, has_more = await newest_first(
        conn,
        table="reminders",
        columns=REMINDER_COLUMNS,
        filters=where,
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
    )
    return [_reminder(row) for row in rows], has_more


async def delete(conn: Connection, *, tenant: str, reminder_id: str) -> Reminder | None:
    """Mark the reminder deleted; a low-balance one takes its threshold off the account."""
    async with conn.transaction():
        row = await conn.fetchrow(
            f"""
            UPDATE reminders SET status = 'deleted', deleted = now()
            WHERE id = $1 AND tenant = $2 AND status = 'active'
            RETURNING {REMINDER_COLUMNS}
            """,  # noqa: S608 - fixed column list
            reminder_id,
            tenant,
        )
        if row is None:
            return None
        if row["type"] == "low_balance":
            await conn.execute(
                "UPDATE ledger_accounts SET low_balance_threshold = NULL WHERE id = $1 AND tenant = $2",
                row["account_id"],
                tenant,
            )
    return _reminder(row)


# ---- the scheduler ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueReminder:
    reminder: Reminder
    preferences: Preferences | None  # None: the customer never saved any (defaults apply)


async def claim_due(
    conn: Connection, *, now: datetime, lease_until: datetime, limit: int
) -> list[DueReminder]:
    """Due bill reminders, oldest first, leased until ``lease_until`` (skipping ones another
    scheduler holds), with their customer's preferences."""
    rows = await conn.fetch(
        f"""
        WITH due AS (
            SELECT id FROM reminders
            WHERE status = 'active' AND type = 'bill_due' AND next_run <= $1
            ORDER BY next_run LIMIT $3
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE reminders r SET next_run = $2 FROM due WHERE r.id = due.id
            RETURNING {", ".join("r." + c for c in REMINDER_COLUMNS.split(", "))}
        )
        SELECT c.*, p.tenant IS NOT NULL AS has_preferences, p.locale, p.timezone, p.default_currency,
               p.channels, p.email, p.phone, p.quiet_start, p.quiet_end, p.reminder_lead_days, p.theme,
               p.font_scale
        FROM claimed c
        LEFT JOIN customer_preferences p ON p.tenant = c.tenant AND p.customer_id = c.customer_id
        """,  # noqa: S608 - fixed column list
        now,
        lease_until,
        limit,
    )
    return [
        DueReminder(_reminder(row), preferences_of(row) if row["has_preferences"] else None) for row in rows
    ]


async def reschedule(conn: Connection, *, reminder_id: str, next_run: datetime) -> None:
    await conn.execute(
        "UPDATE reminders SET next_run = $2 WHERE id = $1 AND status = 'active'", reminder_id, next_run
    )


async def record_notice(
    conn: Connection,
    *,
    reminder: Reminder,
    bill_ref: str,
    due_date: date,
    event_id: str,
    event_type: str,
    data: Mapping[str, Any],
) -> bool:
    """Record that ``reminder`` noticed the bill, with its event and the customer's messages, in
    one statement; False (and nothing written) when the bill was noticed before."""
    rows = await conn.fetch(
        """
        WITH notice AS (
            INSERT INTO reminder_notices (reminder_id, bill_ref, due_date, event_id)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT DO NOTHING
            RETURNING event_id
        ), event AS (
            INSERT INTO events (id, tenant, type, object_id, data)
            SELECT event_id, $5, $6, $1, $7::jsonb FROM notice
            RETURNING id
        )
        SELECT notification_queue_messages($5, $8, id) FROM event
        """,
        reminder.id,
        bill_ref,
        due_date,
        event_id,
        reminder.tenant,
        event_type,
        orjson.dumps(dict(data)).decode(),
        reminder.customer_id,
    )
    return len(rows) == 1


# ---- the message outbox -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DueMessage:
    id: str
    tenant: str
    customer_id: str
    channel: str
    recipient: str
    attempts: int  # including the one this claim starts
    created: datetime
    event_type: str
    event_data: dict[str, Any]
    preferences: Preferences | None


async def claim_messages(
    conn: Connection, *, now: datetime, lease_until: datetime, limit: int
) -> list[DueMessage]:
    rows = await conn.fetch(
        """
        WITH due AS (
            SELECT id FROM notification_messages
            WHERE status = 'pending' AND not_before <= $1
            ORDER BY not_before LIMIT $3
            FOR UPDATE SKIP LOCKED
        ), claimed AS (
            UPDATE notification_messages m SET not_before = $2, attempts = m.attempts + 1
            FROM due WHERE m.id = due.id
            RETURNING m.id, m.tenant, m.customer_id, m.channel, m.recipient, m.attempts, m.created, m.event_id
        )
        SELECT c.*, e.type AS event_type, e.data::text AS event_data,
               p.tenant IS NOT NULL AS has_preferences, p.locale, p.timezone, p.default_currency,
               p.channels, p.email, p.phone, p.quiet_start, p.quiet_end, p.reminder_lead_days, p.theme,
               p.font_scale
        FROM claimed c
        JOIN events e ON e.id = c.event_id
        LEFT JOIN customer_preferences p ON p.tenant = c.tenant AND p.customer_id = c.customer_id
        """,
        now,
        lease_until,
        limit,
    )
    return [
        DueMessage(
            id=row["id"],
            tenant=row["tenant"],
            customer_id=row["customer_id"],
            channel=row["channel"],
            recipient=row["recipient"],
            attempts=row["attempts"],
            created=row["created"],
            event_type=row["event_type"],
            event_data=orjson.loads(row["event_data"]),
            preferences=preferences_of(row) if row["has_preferences"] else None,
        )
        for row in rows
    ]


async def message_sent(conn: Connection, *, message_id: str, body: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE notification_messages SET status = 'sent', body = $2, sent = $3, last_error = NULL "
        "WHERE id = $1",
        message_id,
        body,
        now,
    )


async def message_deferred(conn: Connection, *, message_id: str, not_before: datetime) -> None:
    """Quiet hours: not sent, and this claim does not count as an attempt."""
    await conn.execute(
        "UPDATE notification_messages SET not_before = $2, attempts = greatest(attempts - 1, 0) "
        "WHERE id = $1 AND status = 'pending'",
        message_id,
        not_before,
    )


async def message_failed(conn: Connection, *, message_id: str, error: str, retry_at: datetime | None) -> None:
    """A failed send: retried at ``retry_at``, or given up (``dead``) when it is None."""
    await conn.execute(
        """
        UPDATE notification_messages
        SET last_error = $2, not_before = coalesce($3, not_before),
            status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE status END
        WHERE id = $1 AND status = 'pending'
        """,
        message_id,
        error,
        retry_at,
    )
