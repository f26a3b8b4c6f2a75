"""Bill due-date reminders and low-balance alerts end to end: the scheduler asks the sandbox biller
(bills due in 10 days), emits ``bill.due_soon`` once per bill whatever the number of schedulers,
waits out quiet hours, and the ledger trigger raises ``account.low_balance`` once per crossing;
messages reach the sandbox sink."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import orjson
import pytest

from config.settings import Settings
from connectors.sandbox import messages as message_sandbox
from connectors.sandbox.common import FAULTS
from crypto.pki import PkiPaths
from gateway.keys import BILLERS, DB_POOL, MESSAGES, METRICS, REMINDERS
from gateway.server import RunningGateway
from gateway.services.reminders import ReminderService
from tests.e2e.test_money_flows import balance_payment
from tests.support.api import Api, api_client, card_payment
from tests.support.billers import biller_stack

PHONE = "+8613800138000"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@dataclass
class Stack:
    gw: RunningGateway
    sink: message_sandbox.MessageSink
    acme: Api
    globex: Api


@pytest.fixture
async def stack(settings: Settings, pki: PkiPaths) -> AsyncIterator[Stack]:
    notifications = msgspec.structs.replace(
        settings.notifications,
        reminder_interval=0.5,
        scheduler_interval=0.1,
        message_interval=0.1,
        message_retry=0.2,
        lease=5.0,
    )
    sandbox = msgspec.structs.replace(settings.sandbox, messages=0)
    settings = msgspec.structs.replace(settings, notifications=notifications, sandbox=sandbox)
    sink = await message_sandbox.start(settings)
    settings = msgspec.structs.replace(settings, sandbox=msgspec.structs.replace(sandbox, messages=sink.port))
    try:
        async with (
            biller_stack(settings) as running,
            api_client(pki, "acme", running.gw.api_port) as acme,
            api_client(pki, "globex", running.gw.api_port) as globex,
        ):
            yield Stack(running.gw, sink, acme, globex)
    finally:
        await sink.close()


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 6.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def events(gw: RunningGateway, type_: str, object_id: str) -> list[dict[str, Any]]:
    async with gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, data::text FROM events WHERE type = $1 AND object_id = $2 ORDER BY created, id",
            type_,
            object_id,
        )
    return [{"id": row["id"], **orjson.loads(row["data"])} for row in rows]


async def next_run(gw: RunningGateway, reminder_id: str) -> datetime:
    async with gw.api[DB_POOL].acquire() as conn:
        value: datetime = await conn.fetchval("SELECT next_run FROM reminders WHERE id = $1", reminder_id)
    return value


async def checked_since(gw: RunningGateway, reminder_id: str, since: datetime) -> bool:
    """The scheduler has looked at the reminder at least once after ``since``."""
    return await next_run(gw, reminder_id) > since


async def set_preferences(api: Api, customer: str, **values: Any) -> None:
    body = {"timezone": "Asia/Shanghai", "channels": ["sms"], "phone": PHONE} | values
    reply = await api.request("PUT", f"/v1/customers/{customer}/preferences", body)
    assert reply.status == 200, reply.body


async def bill_reminder(api: Api, customer: str, account: str = "0031234567", **extra: Any) -> dict[str, Any]:
    body = {
        "type": "bill_due",
        "customer": customer,
        "biller": "bil_cn_power",
        "customer_params": {"account_number": account},
    } | extra
    reply = await api.post("/v1/reminders", body, key=None)
    assert reply.status == 200, reply.body
    return dict(reply.body)


async def test_a_bill_due_within_the_lead_days_is_reminded_once(stack: Stack) -> None:
    await set_preferences(stack.acme, "cus_r1")
    reminder = await bill_reminder(stack.acme, "cus_r1", lead_days=10)  # sandbox bills: due in 10 days
    assert reminder["id"].startswith("rem_")
    assert reminder["status"] == "active"
    [event] = await eventually(lambda: events(stack.gw, "bill.due_soon", reminder["id"]))
    assert event["object"] == "bill"
    assert event["biller"] == "bil_cn_power"
    assert event["reminder"] == reminder["id"]
    assert event["customer"] == "cus_r1"
    assert event["days_until_due"] == 10
    assert event["amount_due"] > 0
    fetched = await stack.acme.post(
        "/v1/bills/fetch",
        {"biller": "bil_cn_power", "customer_params": {"account_number": "0031234567"}},
        key=None,
    )
    assert event["bill_ref"] == fetched.body["data"][0]["bill_ref"]
    # Later passes find the same bill and say nothing more.
    since = await next_run(stack.gw, reminder["id"])
    for _ in range(3):
        await eventually(lambda since=since: checked_since(stack.gw, reminder["id"], since))
        since = await next_run(stack.gw, reminder["id"])
    assert len(await events(stack.gw, "bill.due_soon", reminder["id"])) == 1
    # The event is in the API's event log, and the customer got one SMS without customer params.
    listed = await stack.acme.get("/v1/events", type="bill.due_soon")
    assert [e["id"] for e in listed.body["data"]] == [event["id"]]
    messages = await eventually(lambda: asyncio.sleep(0, stack.sink.sent_to(PHONE)))
    assert len(messages) == 1
    assert messages[0].channel == "sms"
    assert "0031234567" not in messages[0].body
    assert event["due_date"] in messages[0].body
    # Counted for the dashboard (gateway/metrics.py): one notice, one SMS sent. The sink has the
    # message before the sender counts its answer, hence the wait.
    registry = stack.gw.api[METRICS].registry
    assert registry.get_sample_value("payhub_reminder_notices_total", {"outcome": "noticed"}) == 1
    sms_sent = {"channel": "sms", "outcome": "sent"}

    async def counted() -> bool:
        return registry.get_sample_value("payhub_notification_messages_total", sms_sent) == 1

    assert await eventually(counted)


async def test_a_bill_further_off_than_the_lead_days_is_not_reminded(stack: Stack) -> None:
    await set_preferences(stack.acme, "cus_r2", reminder_lead_days=3)
    short = await bill_reminder(stack.acme, "cus_r2", lead_days=3)
    by_preference = await bill_reminder(stack.acme, "cus_r2", account="0031234568")  # lead: the customer's 3
    for reminder in (short, by_preference):
        created = await next_run(stack.gw, reminder["id"])
        await eventually(lambda r=reminder, c=created: checked_since(stack.gw, r["id"], c))
        assert await events(stack.gw, "bill.due_soon", reminder["id"]) == []
    # An account with no dues is checked without a notice or an error.
    none_due = await bill_reminder(stack.acme, "cus_r2", account="0031230000", lead_days=30)
    created = await next_run(stack.gw, none_due["id"])
    await eventually(lambda: checked_since(stack.gw, none_due["id"], created))
    assert await events(stack.gw, "bill.due_soon", none_due["id"]) == []
    # The customer's preference applies when the reminder has no lead days of its own.
    await set_preferences(stack.acme, "cus_r2", reminder_lead_days=12)
    await eventually(lambda: events(stack.gw, "bill.due_soon", by_preference["id"]))


async def test_several_schedulers_at_once_emit_once(stack: Stack) -> None:
    gw = stack.gw
    settings = gw.api[REMINDERS].settings
    others = [ReminderService(gw.api[DB_POOL], gw.api[BILLERS], settings) for _ in range(4)]
    await set_preferences(stack.acme, "cus_r3")
    reminder = await bill_reminder(stack.acme, "cus_r3", lead_days=10)
    await asyncio.gather(*(service.run_once() for service in others))
    await eventually(lambda: events(gw, "bill.due_soon", reminder["id"]))
    # Past every lease, all of them at once again: the notice row refuses a second event.
    for _ in range(3):
        async with gw.api[DB_POOL].acquire() as conn:
            await conn.execute(
                "UPDATE reminders SET next_run = now() - interval '1 second' WHERE id = $1", reminder["id"]
            )
        await asyncio.gather(*(service.run_once() for service in others))
    assert len(await events(gw, "bill.due_soon", reminder["id"])) == 1


def hhmm(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).strftime("%H:%M")


async def test_quiet_hours_delay_the_reminder_and_its_message(stack: Stack) -> None:
    gw = stack.gw
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=2)
    await set_preferences(stack.acme, "cus_r4", quiet_hours={"start": hhmm(start), "end": hhmm(end)})
    reminder = await bill_reminder(stack.acme, "cus_r4", lead_days=10)
    quiet_end = end.replace(second=0, microsecond=0)
    await eventually(lambda: checked_since(gw, reminder["id"], now + timedelta(minutes=30)))
    assert abs(await next_run(gw, reminder["id"]) - quiet_end) < timedelta(seconds=1)
    assert await events(gw, "bill.due_soon", reminder["id"]) == []
    shown = await stack.acme.get(f"/v1/reminders/{reminder['id']}")
    assert shown.body["next_run"] == quiet_end.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Once the quiet hours are over (the scheduler's clock moves past their end), it fires.
    later = timedelta(hours=2, minutes=2)
    gw.api[REMINDERS].clock = lambda: datetime.now(UTC) + later
    [event] = await eventually(lambda: events(gw, "bill.due_soon", reminder["id"]))
    # The SMS waits too: queued with the event, held by the sender until the quiet hours end.
    async with gw.api[DB_POOL].acquire() as conn:
        held = await eventually(
            lambda: conn.fetchrow(
                "SELECT status, not_before FROM notification_messages "
                "WHERE event_id = $1 AND not_before > now() + interval '1 hour'",
                event["id"],
            )
        )
    assert held["status"] == "pending"
    assert abs(held["not_before"] - quiet_end) < timedelta(seconds=1)
    assert stack.sink.sent_to(PHONE) == []
    gw.api[MESSAGES].clock = lambda: datetime.now(UTC) + later
    await eventually(lambda: asyncio.sleep(0, stack.sink.sent_to(PHONE)))


async def topup(api: Api, account: str, amount: int) -> None:
    reply = await api.post(
        f"/v1/accounts/{account}/topups",
        {"amount": amount, "currency": "CNY", "payment_method": card_payment()["payment_method"]},
    )
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "succeeded"


async def pay(api: Api, account: str, amount: int) -> None:
    reply = await api.post("/v1/payments", balance_payment(account, amount))
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "succeeded", reply.body


async def test_low_balance_fires_once_per_crossing(stack: Stack) -> None:
    gw, acme = stack.gw, stack.acme
    email = "lb@example.com"
    prefs = await acme.request(
        "PUT", "/v1/customers/cus_lb/preferences", {"channels": ["email"], "email": email, "locale": "zh-CN"}
    )
    assert prefs.status == 200, prefs.body
    account = await acme.post("/v1/accounts", {"currency": "CNY", "customer": "cus_lb"}, key=None)
    account_id = account.body["id"]
    await topup(acme, account_id, 10_000)
    created = await acme.post(
        "/v1/reminders", {"type": "low_balance", "account": account_id, "threshold": 5_000}, key=None
    )
    assert created.status == 200, created.body
    reminder = created.body
    assert (reminder["customer"], reminder["currency"], reminder["threshold"]) == ("cus_lb", "CNY", 5_000)
    again = await acme.post(
        "/v1/reminders", {"type": "low_balance", "account": account_id, "threshold": 1_000}, key=None
    )
    assert (again.status, again.body["error"]["param"]) == (409, "account")

    await pay(acme, account_id, 3_000)  # 7000: still above
    assert await events(gw, "account.low_balance", account_id) == []
    await pay(acme, account_id, 3_000)  # 4000: crossed
    [first] = await events(gw, "account.low_balance", account_id)
    assert first["object"] == "account"
    assert first["balance"] == {"available": 4_000, "pending": 0}
    assert (first["low_balance_threshold"], first["reminder"], first["customer"]) == (
        5_000,
        reminder["id"],
        "cus_lb",
    )
    shown = await acme.get(f"/v1/accounts/{account_id}")
    assert {k: first[k] for k in shown.body} == shown.body  # the account as the API renders it
    await pay(acme, account_id, 1_000)  # 3000: still below, no second alert
    assert len(await events(gw, "account.low_balance", account_id)) == 1
    await topup(acme, account_id, 5_000)  # 8000: above again
    await pay(acme, account_id, 4_000)  # 4000: crossed again
    assert len(await events(gw, "account.low_balance", account_id)) == 2
    sent = await eventually(
        lambda: asyncio.sleep(0, len(stack.sink.sent_to(email)) == 2 and stack.sink.sent_to(email))
    )
    assert all(m.channel == "email" and account_id in m.body and "40.00 CNY" in m.body for m in sent)

    # Deleted: the threshold leaves the account, and crossings say nothing.
    deleted = await acme.request("DELETE", f"/v1/reminders/{reminder['id']}")
    assert (deleted.status, deleted.body["status"]) == (200, "deleted")
    assert (await acme.get(f"/v1/reminders/{reminder['id']}")).status == 404
    await topup(acme, account_id, 5_000)
    await pay(acme, account_id, 6_000)
    assert len(await events(gw, "account.low_balance", account_id)) == 2


async def test_reminder_requests_are_checked(stack: Stack) -> None:
    acme = stack.acme
    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            {"type": "bill_due", "customer": "c", "customer_params": {"account_number": "0031234567"}},
            400,
            "biller",
        ),
        (
            {"type": "bill_due", "biller": "bil_cn_power", "customer_params": {"account_number": "1"}},
            400,
            "customer",
        ),
        (
            {
                "type": "bill_due",
                "customer": "c",
                "biller": "bil_nope",
                "customer_params": {"account_number": "1"},
            },
            404,
            "biller",
        ),
        (
            {
                "type": "bill_due",
                "customer": "c",
                "biller": "bil_cn_power",
                "customer_params": {"account_number": "1"},
            },
            400,
            "customer_params.account_number",
        ),
        (
            {
                "type": "bill_due",
                "customer": "c",
                "biller": "bil_cn_mobile",
                "customer_params": {"msisdn": "+8613800138001"},
            },
            400,
            "biller",
        ),
        ({"type": "low_balance", "account": "acct_nope", "threshold": 100}, 404, "account"),
        ({"type": "low_balance", "account": "acct_nope"}, 400, "threshold"),
        ({"type": "low_balance", "account": "acct_x", "threshold": 0}, 400, "threshold"),
        ({"type": "low_balance", "account": "acct_x", "threshold": 5, "lead_days": 3}, 400, "lead_days"),
        ({"type": "bill_due", "lead_days": 61}, 400, "lead_days"),
        ({"type": "weekly"}, 400, "type"),
    ]
    for body, status, param in cases:
        reply = await acme.post("/v1/reminders", body, key=None)
        assert (reply.status, reply.body["error"]["param"]) == (status, param), (body, reply.body)


async def test_reminders_are_the_tenants_own(stack: Stack) -> None:
    acme, globex = stack.acme, stack.globex
    reminder = await bill_reminder(acme, "cus_r5", lead_days=0)
    account = await acme.post("/v1/accounts", {"currency": "CNY", "customer": "cus_r5"}, key=None)
    listed = await acme.get("/v1/reminders", customer="cus_r5")
    assert [r["id"] for r in listed.body["data"]] == [reminder["id"]]
    assert (await acme.get("/v1/reminders", customer="cus_other")).body["data"] == []
    for method in ("GET", "DELETE"):
        reply = await globex.request(method, f"/v1/reminders/{reminder['id']}")
        assert (reply.status, reply.body["error"]["param"]) == (404, "id"), method
    assert (await globex.get("/v1/reminders")).body["data"] == []
    other = await globex.get("/v1/reminders", starting_after=reminder["id"])
    assert (other.status, other.body["error"]["param"]) == (404, "starting_after")
    theirs = await globex.post(
        "/v1/reminders", {"type": "low_balance", "account": account.body["id"], "threshold": 100}, key=None
    )
    assert (theirs.status, theirs.body["error"]["param"]) == (404, "account")
    assert (await acme.get(f"/v1/reminders/{reminder['id']}")).body["status"] == "active"


async def test_a_message_the_sink_refuses_is_retried_until_sent(stack: Stack) -> None:
    gw = stack.gw
    faults = stack.sink.app[FAULTS]
    faults.error_rate = 1.0  # every send answered 503
    await set_preferences(stack.acme, "cus_r6")
    reminder = await bill_reminder(stack.acme, "cus_r6", lead_days=10)
    [event] = await eventually(lambda: events(gw, "bill.due_soon", reminder["id"]))

    async def attempts() -> Any:
        async with gw.api[DB_POOL].acquire() as conn:
            return await conn.fetchrow(
                "SELECT status, attempts, last_error FROM notification_messages WHERE event_id = $1",
                event["id"],
            )

    failing = await eventually(lambda: _at_least_two(attempts))
    assert failing["status"] == "pending"
    assert failing["last_error"] in ("OutcomeUnknown", "ConnectorUnavailable")  # a 503 from the sink
    faults.error_rate = 0.0
    [message] = await eventually(lambda: asyncio.sleep(0, stack.sink.sent_to(PHONE)))
    assert message.channel == "sms"
    # The sink has the message before the sender records its answer: wait for the row.
    assert await eventually(lambda: _with_status(attempts, "sent"))


async def _with_status(read: Callable[[], Awaitable[Any]], status: str) -> Any:
    row = await read()
    return row if row is not None and row["status"] == status else None


async def _at_least_two(read: Callable[[], Awaitable[Any]]) -> Any:
    row = await read()
    return row if row is not None and row["attempts"] >= 2 else None
