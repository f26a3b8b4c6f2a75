"""Reminders: bill due-date reminders and low-balance alerts (``/v1/reminders``), and the
scheduler pass that turns due bills into ``bill.due_soon`` events.

``bill_due``: every ``reminder_interval`` the scheduler asks the biller for the customer's open
bills; a bill due within the lead days (the reminder's, else the customer's preference, else the
configured default; counted on the customer's calendar) is noticed once: the notice row, the
event and the customer's messages are one statement, and the notice's primary key refuses a
second one, so any number of schedulers emit once. A customer in quiet hours is not reminded:
the reminder's next run moves to the end of the quiet hours (delayed, never dropped).

``low_balance``: the threshold lives on the ledger account and a database trigger raises
``account.low_balance`` in the transaction that moves the balance across it (migration 0011);
this module only sets and clears it.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
import msgspec
import orjson

from config.settings import NotificationSettings
from connectors.base import Bill
from gateway import errors
from gateway.domain.event_types import EventType
from gateway.domain.notifications import (
    Preferences,
    days_until,
    is_due_soon,
    quiet_until,
    zone_of,
)
from gateway.ids import new_id
from gateway.logs import get_logger
from gateway.services.billers import BillerCatalog
from gateway.store import reminders as store
from gateway.store.reminders import DueReminder, Reminder
from gateway.views import schemas

log = get_logger("gateway.reminders")

BILL_DUE_SOON: Final[EventType] = "bill.due_soon"

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one scheduler pass did (for tests and logs)."""

    claimed: int = 0
    noticed: int = 0
    quiet: int = 0
    failed: int = 0


def _refuse_other_fields(body: schemas.CreateReminderRequest, names: tuple[str, ...]) -> None:
    for name in names:
        if getattr(body, name) is not None:
            raise errors.InvalidRequest(
                f"{name} does not apply to a {body.type} reminder.", code="parameter_unknown", param=name
            )


def _require(value: object, name: str, kind: str) -> None:
    if value is None:
        raise errors.InvalidRequest(
            f"Missing required parameter for a {kind} reminder: {name}.", code="parameter_missing", param=name
        )


class ReminderService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        catalog: BillerCatalog,
        settings: NotificationSettings,
        *,
        clock: Clock = utc_now,
    ) -> None:
        self._pool = pool
        self._catalog = catalog
        self.settings = settings
        self.clock = clock  # replaceable: tests move time to the end of quiet hours

    # ---- the API

    async def create(self, tenant: str, body: schemas.CreateReminderRequest) -> Reminder:
        if body.type == "bill_due":
            return await self._create_bill_reminder(tenant, body)
        return await self._create_low_balance(tenant, body)

    async def _create_bill_reminder(self, tenant: str, body: schemas.CreateReminderRequest) -> Reminder:
        _refuse_other_fields(body, ("account", "threshold"))
        _require(body.customer, "customer", body.type)
        _require(body.biller, "biller", body.type)
        _require(body.customer_params, "customer_params", body.type)
        assert body.customer is not None
        assert body.biller is not None
        assert body.customer_params is not None
        _, params = self._catalog.check_customer_params(body.biller, body.customer_params)
        async with self._pool.acquire() as conn:
            return await store.create_bill_reminder(
                conn,
                reminder_id=new_id("rem"),
                tenant=tenant,
                customer_id=body.customer,
                biller=body.biller,
                customer_params=params,
                lead_days=body.lead_days,
                next_run=self.clock(),  # the first check runs on the scheduler's next pass
            )

    async def _create_low_balance(self, tenant: str, body: schemas.CreateReminderRequest) -> Reminder:
        _refuse_other_fields(body, ("biller", "customer_params", "lead_days"))
        _require(body.account, "account", body.type)
        _require(body.threshold, "threshold", body.type)
        assert body.account is not None
        assert body.threshold is not None
        try:
            async with self._pool.acquire() as conn:
                reminder = await store.create_low_balance_reminder(
                    conn,
                    reminder_id=new_id("rem"),
                    tenant=tenant,
                    customer_id=body.customer,
                    account_id=body.account,
                    threshold=body.threshold,
                )
        except store.LowBalanceExists as exc:
            raise errors.Conflict(
                f"Account {body.account} already has a low-balance reminder: delete it first.",
                code="reminder_exists",
                param="account",
            ) from exc
        if reminder is None:
            raise errors.NotFound(f"No such account: '{body.account}'.", param="account")
        return reminder

    async def get(self, tenant: str, reminder_id: str) -> Reminder:
        async with self._pool.acquire() as conn:
            reminder = await store.get(conn, tenant=tenant, reminder_id=reminder_id)
        if reminder is None:
            raise errors.NotFound(f"No such reminder: '{reminder_id}'.", param="id")
        return reminder

    async def list(
        self,
        tenant: str,
        *,
        customer_id: str | None,
        limit: int,
        starting_after: str | None,
        ending_before: str | None,
    ) -> tuple[builtins.list[Reminder], bool]:
        """Active reminders, newest first; 404 naming the cursor when it is not the tenant's."""
        async with self._pool.acquire() as conn:
            reminders, has_more = await store.list_active(
                conn,
                tenant=tenant,
                customer_id=customer_id,
                limit=limit,
                starting_after=starting_after,
                ending_before=ending_before,
            )
            cursor = starting_after or ending_before
            if (
                cursor is not None
                and not reminders
                and not await store.exists(conn, tenant=tenant, reminder_id=cursor)
            ):
                param = "starting_after" if starting_after else "ending_before"
                raise errors.NotFound(f"No such reminder: '{cursor}'.", param=param)
        return reminders, has_more

    async def delete(self, tenant: str, reminder_id: str) -> Reminder:
        async with self._pool.acquire() as conn:
            reminder = await store.delete(conn, tenant=tenant, reminder_id=reminder_id)
        if reminder is None:
            raise errors.NotFound(f"No such reminder: '{reminder_id}'.", param="id")
        return reminder

    # ---- the scheduler

    async def run_once(self) -> PassResult:
        """Claim the due bill reminders (leased, SKIP LOCKED) and check each one."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.lease)
        async with self._pool.acquire() as conn:
            due = await store.claim_due(conn, now=now, lease_until=lease_until, limit=self.settings.batch)
        totals = PassResult(claimed=len(due))
        for item in due:
            try:
                noticed, quiet = await self._check(item, now)
            except Exception as exc:  # one broken reminder must not stop the others; its lease retries it
                log.warning("reminders.check_failed", reminder=item.reminder.id, error=type(exc).__name__)
                totals = _add(totals, failed=1)
                continue
            totals = _add(totals, noticed=noticed, quiet=int(quiet))
        return totals

    async def _check(self, item: DueReminder, now: datetime) -> tuple[int, bool]:
        reminder = item.reminder
        prefs = item.preferences or Preferences(reminder_lead_days=self.settings.default_lead_days)
        zone = zone_of(prefs.timezone)
        quiet_end = quiet_until(now, zone, prefs.quiet_hours)
        if quiet_end is not None:
            await self._reschedule(reminder.id, quiet_end)
            return 0, True
        bills = await self._open_bills(reminder)
        if bills is None:  # the biller did not answer: ask again sooner than the interval
            await self._reschedule(reminder.id, now + timedelta(seconds=self.settings.biller_retry))
            return 0, False
        lead = reminder.lead_days if reminder.lead_days is not None else prefs.reminder_lead_days
        noticed = 0
        for bill in bills:
            if not is_due_soon(bill.due_date, now, zone, lead):
                continue
            data = _bill_reminder_data(reminder, bill, days_until(bill.due_date, now, zone), lead)
            async with self._pool.acquire() as conn:
                if await store.record_notice(
                    conn,
                    reminder=reminder,
                    bill_ref=bill.bill_ref,
                    due_date=bill.due_date,
                    event_id=new_id("evt"),
                    event_type=BILL_DUE_SOON,
                    data=data,
                ):
                    noticed += 1
        await self._reschedule(reminder.id, now + timedelta(seconds=self.settings.reminder_interval))
        return noticed, False

    async def _open_bills(self, reminder: Reminder) -> builtins.list[Bill] | None:
        """The customer's open bills; [] when none is due; None when the biller cannot say now."""
        assert reminder.biller is not None
        assert reminder.customer_params is not None
        try:
            return await self._catalog.fetch(reminder.tenant, reminder.biller, reminder.customer_params)
        except errors.NotFound as exc:
            if exc.code == "bill_not_found":
                return []
            log.warning("reminders.biller_refused", reminder=reminder.id, code=exc.code)
            return None
        except errors.ApiError as exc:
            log.warning("reminders.biller_unavailable", reminder=reminder.id, code=exc.code)
            return None

    async def _reschedule(self, reminder_id: str, next_run: datetime) -> None:
        async with self._pool.acquire() as conn:
            await store.reschedule(conn, reminder_id=reminder_id, next_run=next_run)


def _add(result: PassResult, *, noticed: int = 0, quiet: int = 0, failed: int = 0) -> PassResult:
    return PassResult(
        claimed=result.claimed,
        noticed=result.noticed + noticed,
        quiet=result.quiet + quiet,
        failed=result.failed + failed,
    )


def _bill_reminder_data(reminder: Reminder, bill: Bill, days: int, lead_days: int) -> dict[str, object]:
    """The ``bill.due_soon`` event's object: the bill as ``POST /v1/bills/fetch`` shows it, plus
    the reminder, the customer, the days left on the customer's calendar and the lead days used."""
    assert reminder.biller is not None
    bill_object = schemas.Bill(
        bill_ref=bill.bill_ref,
        biller=reminder.biller,
        amount_due=bill.amount_due,
        currency=bill.currency,
        due_date=bill.due_date.isoformat(),
        customer_name=bill.customer_name,
    )
    data: dict[str, object] = orjson.loads(msgspec.json.encode(bill_object))
    return data | {
        "reminder": reminder.id,
        "customer": reminder.customer_id,
        "days_until_due": days,
        "lead_days": lead_days,
    }
