"""``GET /v1/payments`` as a history: every filter, keyset pagination both ways, concurrency,
parameter errors, and query plans that use the indexes.

The expected answers come from a Python-side filter over what the test created; ordering ties
(same ``created``) are ranked by PostgreSQL's text order, the one the list query sorts ids with.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from config.settings import Settings
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from gateway.store import payments as store
from tests.support.api import Api, card_payment
from tests.support.mtls import gateway, hold_async_settlement

DECLINED = "4000000000000002"
WALLET = {"type": "wallet", "wallet": {"provider": "alipay"}}
BANK = {"type": "bank_transfer", "bank_transfer": {"account_number": "6222000011112222"}}
CUSTOMERS = ("cus_a", "cus_b", "cus_c", None)
COUNT = 30


@dataclass(frozen=True)
class Row:
    id: str
    status: str
    method: str
    customer: str | None
    amount: int
    created: datetime
    rank: int  # position in newest-first order


@pytest.fixture
async def gw(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with gateway(settings) as running:
        hold_async_settlement(running)  # these tests count payments in flight: nothing settles meanwhile
        yield running


def body_for(i: int) -> tuple[dict[str, Any], str]:
    """Payment i of the history and the status it must end in."""
    amount = 100 + (i * 37 % COUNT) * 100  # 30 different amounts, not in creation order
    customer = CUSTOMERS[i % len(CUSTOMERS)]
    kind = i % 5
    if kind in (0, 1):
        body = card_payment("4111111111111111" if kind == 0 else "5555555555554444", amount)
        status = "succeeded"
    elif kind == 2:
        body, status = card_payment(DECLINED, amount), "failed"
    else:
        body = {**card_payment(amount=amount), "payment_method": WALLET if kind == 3 else BANK}
        status = "requires_action" if kind == 3 else "processing"
    if customer is None:
        del body["customer"]
    else:
        body["customer"] = {"id": customer}
    return body, status


def rfc3339(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def newest_first(gw: RunningGateway, rows: list[tuple[str, datetime]]) -> list[str]:
    """Ids ordered by (created, id) descending, ids compared by the database's text collation."""
    async with gw.api[DB_POOL].acquire() as conn:
        ordered = [r["id"] for r in await conn.fetch("SELECT id FROM unnest($1::text[]) AS id ORDER BY id", [
            row[0] for row in rows
        ])]  # fmt: skip
    text_rank = {pid: n for n, pid in enumerate(ordered)}
    return [pid for pid, _ in sorted(rows, key=lambda r: (r[1], text_rank[r[0]]), reverse=True)]


@pytest.fixture
async def history(acme: Api, gw: RunningGateway) -> list[Row]:
    """30 payments of four methods, four outcomes, three customers and none, spread over an hour.

    Created through the API, then moved back in time (two per minute, so pairs tie on ``created``
    and the id tie-break is exercised): a history, not 30 rows from the same second. Whole-second
    times make ``created`` as shown exact, so bounds taken from it mean the same to client and server.
    """
    made: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for i in range(COUNT):
        body, status = body_for(i)
        reply = await acme.post("/v1/payments", body)
        assert reply.status == 200, reply.body
        assert reply.body["status"] == status, (i, reply.body)
        made.append((body, reply.body))
    base = (datetime.now(UTC) - timedelta(days=2)).replace(second=0, microsecond=0)
    created = {payment["id"]: base + timedelta(minutes=i // 2) for i, (_, payment) in enumerate(made)}
    async with gw.api[DB_POOL].acquire() as conn:
        await conn.execute(
            "UPDATE payments p SET created = v.created"
            " FROM unnest($1::text[], $2::timestamptz[]) AS v(id, created) WHERE p.id = v.id",
            list(created),
            list(created.values()),
        )
    order = await newest_first(gw, list(created.items()))
    rows = [
        Row(
            id=payment["id"],
            status=payment["status"],
            method=body["payment_method"]["type"],
            customer=(body.get("customer") or {}).get("id"),
            amount=payment["amount"],
            created=created[payment["id"]],
            rank=order.index(payment["id"]),
        )
        for body, payment in made
    ]
    return sorted(rows, key=lambda r: r.rank)


async def walk(api: Api, limit: int, **params: Any) -> tuple[list[str], list[bool]]:
    """All ids through starting_after, and each page's has_more."""
    ids: list[str] = []
    more: list[bool] = []
    cursor: dict[str, str] = {}
    while True:
        reply = await api.get("/v1/payments", limit=str(limit), **params, **cursor)
        assert reply.status == 200, reply.body
        page = [p["id"] for p in reply.body["data"]]
        assert len(page) <= limit
        ids += page
        more.append(reply.body["has_more"])
        if not reply.body["has_more"]:
            return ids, more
        cursor = {"starting_after": page[-1]}


def expect(history: list[Row], keep: Callable[[Row], bool]) -> list[str]:
    return [row.id for row in history if keep(row)]


async def test_the_history_is_newest_first_and_shows_what_was_created(acme: Api, history: list[Row]) -> None:
    reply = await acme.get("/v1/payments", limit="100")
    assert reply.body["has_more"] is False
    shown = reply.body["data"]
    assert [p["id"] for p in shown] == [row.id for row in history]
    by_id = {row.id: row for row in history}
    for payment in shown:
        row = by_id[payment["id"]]
        assert payment["created"] == rfc3339(row.created)
        assert (payment["status"], payment["payment_method"]["type"], payment["amount"]) == (
            row.status,
            row.method,
            row.amount,
        )
        assert (payment["customer"] or {}).get("id") == row.customer


async def test_every_filter_returns_exactly_the_matching_payments(acme: Api, history: list[Row]) -> None:
    times = sorted({row.created for row in history})
    early, late = times[3], times[-4]
    amounts = sorted(row.amount for row in history)
    low, high = amounts[5], amounts[-8]
    cases: list[tuple[dict[str, str], Callable[[Row], bool]]] = [
        ({}, lambda r: True),
        *[
            ({"status": s}, lambda r, s=s: r.status == s)
            for s in ("succeeded", "failed", "requires_action", "processing")
        ],
        ({"status": "canceled"}, lambda r: False),
        *[
            ({"method": m}, lambda r, m=m: r.method == m)
            for m in ("card", "wallet", "bank_transfer", "prepaid")
        ],
        *[
            ({"customer": c}, lambda r, c=c: r.customer == c)
            for c in ("cus_a", "cus_b", "cus_c", "cus_nobody")
        ],
        ({"created_gte": rfc3339(early)}, lambda r: r.created >= early),
        ({"created_lte": rfc3339(late)}, lambda r: r.created <= late),
        ({"created_gte": rfc3339(early), "created_lte": rfc3339(late)}, lambda r: early <= r.created <= late),
        ({"created_gte": rfc3339(late), "created_lte": rfc3339(early)}, lambda r: False),
        # Unix seconds are accepted too (Stripe's form).
        ({"created_gte": str(int(early.timestamp()))}, lambda r: r.created >= early),
        ({"created_lte": str(int(late.timestamp()))}, lambda r: r.created <= late),
        # Another zone, same instant.
        (
            {"created_gte": early.astimezone(timezone(timedelta(hours=8))).isoformat()},
            lambda r: r.created >= early,
        ),
        ({"amount_gte": str(low)}, lambda r: r.amount >= low),
        ({"amount_lte": str(high)}, lambda r: r.amount <= high),
        ({"amount_gte": str(low), "amount_lte": str(high)}, lambda r: low <= r.amount <= high),
        ({"amount_gte": str(low), "amount_lte": str(low)}, lambda r: r.amount == low),
        (
            {"status": "succeeded", "customer": "cus_a"},
            lambda r: r.status == "succeeded" and r.customer == "cus_a",
        ),
        ({"method": "card", "status": "failed"}, lambda r: r.method == "card" and r.status == "failed"),
        ({"method": "wallet", "status": "succeeded"}, lambda r: False),
        (
            {
                "method": "card",
                "created_gte": rfc3339(early),
                "created_lte": rfc3339(late),
                "amount_gte": str(low),
            },
            lambda r: r.method == "card" and early <= r.created <= late and r.amount >= low,
        ),
        (
            {"customer": "cus_b", "amount_lte": str(high), "status": "processing"},
            lambda r: r.customer == "cus_b" and r.amount <= high and r.status == "processing",
        ),
    ]
    for params, keep in cases:
        wanted = expect(history, keep)
        reply = await acme.get("/v1/payments", limit="100", **params)
        assert reply.status == 200, (params, reply.body)
        assert [p["id"] for p in reply.body["data"]] == wanted, params
        assert reply.body["has_more"] is False
        # The same through small pages.
        ids, _ = await walk(acme, 4, **params)
        assert ids == wanted, params
    # Each non-trivial filter above really discriminates (the fixture has a bit of everything).
    assert 0 < len(expect(history, lambda r: early <= r.created <= late)) < COUNT
    assert 0 < len(expect(history, lambda r: low <= r.amount <= high)) < COUNT


async def test_pages_of_seven_return_every_payment_once_newest_first(acme: Api, history: list[Row]) -> None:
    ids, more = await walk(acme, 7)
    assert ids == [row.id for row in history]
    assert more == [True, True, True, True, False]  # 7 + 7 + 7 + 7 + 2

    exact = await acme.get("/v1/payments", limit=str(COUNT))
    assert (len(exact.body["data"]), exact.body["has_more"]) == (COUNT, False)
    short = await acme.get("/v1/payments", limit=str(COUNT - 1))
    assert (len(short.body["data"]), short.body["has_more"]) == (COUNT - 1, True)
    past_the_end = await acme.get("/v1/payments", starting_after=history[-1].id)
    assert (past_the_end.status, past_the_end.body["data"], past_the_end.body["has_more"]) == (200, [], False)

    # Filtered pages too.
    succeeded = expect(history, lambda r: r.status == "succeeded")
    ids, more = await walk(acme, 5, status="succeeded")
    assert ids == succeeded
    assert more[-1] is False
    assert len(more) == -(-len(succeeded) // 5)  # has_more is exact: no empty page at the end


async def test_ending_before_walks_back_to_the_newest(acme: Api, history: list[Row]) -> None:
    everything = [row.id for row in history]
    collected: list[str] = []
    cursor = everything[-1]
    pages = 0
    while True:
        reply = await acme.get("/v1/payments", limit="7", ending_before=cursor)
        assert reply.status == 200, reply.body
        page = [p["id"] for p in reply.body["data"]]
        # Each page is the 7 just newer than the cursor, still shown newest first.
        position = everything.index(cursor)
        assert page == everything[max(0, position - 7) : position]
        collected = page + collected
        pages += 1
        if not reply.body["has_more"]:
            break
        cursor = page[0]
    assert collected == everything[:-1]
    assert pages == 5  # 29 rows: 7 + 7 + 7 + 7 + 1
    first = await acme.get("/v1/payments", ending_before=everything[0])
    assert (first.body["data"], first.body["has_more"]) == ([], False)


async def test_payments_made_while_paginating_cause_no_duplicates_or_skips(
    acme: Api, history: list[Row]
) -> None:
    older = [row.id for row in history]
    walked: list[str] = []
    cursor: dict[str, str] = {}
    new_ids: list[str] = []
    while True:
        # Each page is read while another payment is being made.
        page_reply, made = await asyncio.gather(
            acme.get("/v1/payments", limit="7", **cursor),
            acme.post("/v1/payments", card_payment(amount=4242)),
        )
        assert made.status == 200
        new_ids.append(made.body["id"])
        page = [p["id"] for p in page_reply.body["data"]]
        walked += page
        if not page_reply.body["has_more"]:
            break
        cursor = {"starting_after": page[-1]}
    # The first page may or may not include the first concurrent payment; nothing else new shows.
    walked_older = [pid for pid in walked if pid not in new_ids]
    assert walked_older == older
    assert len(walked) == len(set(walked))
    assert set(walked) - set(older) <= {new_ids[0]}
    # A fresh walk sees the new payments first, then the same history.
    ids, _ = await walk(acme, 7)
    assert ids[len(new_ids) :] == older
    assert set(ids[: len(new_ids)]) == set(new_ids)


async def test_list_parameter_errors(acme: Api, history: list[Row]) -> None:
    for limit in ("0", "101", "abc", "-1", "", "1.5"):
        reply = await acme.get("/v1/payments", limit=limit)
        assert reply.status == 400, (limit, reply.body)
        assert (reply.body["error"]["type"], reply.body["error"]["param"]) == (
            "invalid_request_error",
            "limit",
        )
    for limit in ("1", "100"):
        assert (await acme.get("/v1/payments", limit=limit)).status == 200
    both = await acme.get("/v1/payments", starting_after=history[3].id, ending_before=history[1].id)
    assert both.status == 400
    assert both.body["error"]["param"] in ("starting_after", "ending_before")
    for param in ("starting_after", "ending_before"):
        unknown = await acme.get("/v1/payments", **{param: "pay_doesnotexist"})
        assert unknown.status == 404
        assert (unknown.body["error"]["code"], unknown.body["error"]["param"]) == ("resource_missing", param)
    for params, param in (
        ({"status": "paid"}, "status"),
        ({"method": "cash"}, "method"),
        ({"amount_gte": "-1"}, "amount_gte"),
        ({"amount_lte": "ten"}, "amount_lte"),
        ({"created_gte": "yesterday"}, "created_gte"),
        ({"created_lte": "2025-06-01T00:00:00"}, "created_lte"),  # no zone: ambiguous
    ):
        reply = await acme.get("/v1/payments", **params)
        assert reply.status == 400, (params, reply.body)
        assert reply.body["error"]["param"] == param


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("limit", "²"),  # str.isdigit() accepts superscripts; int() does not (gateway/api/lists.py)
        ("amount_gte", "²"),  # same in gateway/api/payments.py _int
        ("created_gte", "²"),  # same in gateway/api/payments.py _time
        ("created_gte", "999999999999"),  # Unix seconds past year 9999: fromtimestamp raises
        ("created_gte", "0001-01-01T00:00:00+01:00"),  # before year 1 in UTC: asyncpg refuses
        ("created_lte", "9999-12-31T23:59:59-05:00"),  # after year 9999 in UTC: asyncpg refuses
    ],
)
async def test_out_of_range_parameters_are_400_not_500(acme: Api, param: str, value: str) -> None:
    reply = await acme.get("/v1/payments", **{param: value})
    assert reply.status == 400, reply.body
    assert reply.body["error"]["param"] == param


async def test_created_lte_with_a_shown_created_includes_that_payment(acme: Api) -> None:
    made = await acme.post("/v1/payments", card_payment())
    payment = made.body
    # A client that asks for everything up to a payment's own `created` expects to get that payment.
    reply = await acme.get("/v1/payments", created_lte=payment["created"])
    assert [p["id"] for p in reply.body["data"]] == [payment["id"]]


# ---- query plans --------------------------------------------------------------------------------


class RecordingConnection:
    """Stands in for a connection to capture the exact SQL and arguments list_payments sends."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append((sql, args))
        return []


async def plan_of(conn: Any, filters: store.PaymentFilters, starting_after: str | None = None) -> str:
    recorder = RecordingConnection()
    await store.list_payments(
        recorder,  # type: ignore[arg-type]
        tenant="acme",
        filters=filters,
        limit=10,
        starting_after=starting_after,
        ending_before=None,
    )
    [(sql, args)] = recorder.calls
    return "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))


async def test_list_queries_use_the_indexes(gw: RunningGateway) -> None:
    statuses = "ARRAY['requires_action', 'processing', 'requires_capture', 'under_review', " + (
        "'succeeded', 'failed', 'canceled']"
    )
    async with gw.api[DB_POOL].acquire() as conn:
        # Three tenants, 9,000 payments over a few days, every status; statistics up to date.
        await conn.execute(
            f"""
            INSERT INTO payments (id, tenant, status, amount, currency, method, payment_method,
                                  capture_method, customer_id, created)
            SELECT 'pay_gen' || g, (ARRAY['acme', 'globex', 'initech'])[1 + g % 3], ({statuses})[1 + g % 7],
                   100 + g, 'CNY', 'card', '{{}}'::jsonb, 'automatic', 'cus_' || (g % 50),
                   now() - make_interval(secs => g * 30)
            FROM generate_series(1, 9000) AS g
            """
        )
        await conn.execute("ANALYZE payments")
        cursor = "pay_gen4500"  # an acme payment in the middle of its history
        assert await conn.fetchval("SELECT tenant FROM payments WHERE id = $1", cursor) == "acme"
        for filters, index in (
            (store.PaymentFilters(), "payments_tenant_created"),
            (store.PaymentFilters(status="failed"), "payments_tenant_status"),
        ):
            for after in (None, cursor):
                plan = await plan_of(conn, filters, after)
                assert f"Index Scan using {index} on payments" in plan or (
                    f"Index Only Scan using {index} on payments" in plan
                ), plan
                assert "Seq Scan" not in plan, plan
                assert "Sort" not in plan, plan  # the index gives the order: no sorting of the history
                if after is not None:
                    # The cursor is an index condition, so a deep page does not scan the pages before it.
                    assert "ROW(created, id) < " in plan.split("Index Cond:", 2)[-1], plan
