"""``/v1/events`` over real mTLS against real PostgreSQL: one event per outcome, filters, pages, tenancy."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from gateway.store import events as events_store
from tests.support.api import Api, api_client, card_payment
from tests.support.mtls import gateway, hold_async_settlement

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

WALLET = {"type": "wallet", "wallet": {"provider": "alipay"}}
BANK = {"type": "bank_transfer", "bank_transfer": {"account_number": "6222000011112222"}}


@pytest.fixture
async def gw(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with gateway(settings) as running:
        hold_async_settlement(running)  # these tests count payments in flight: nothing settles meanwhile
        yield running


@pytest.fixture
async def globex(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "globex", gw.api_port) as api:
        yield api


async def pay(api: Api, method: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body = card_payment(**extra)
    if method is not None:
        body["payment_method"] = method
    reply = await api.post("/v1/payments", body)
    assert reply.status == 200, reply.body
    return reply.body


async def walk(api: Api, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every object of a list, following starting_after until has_more is false."""
    seen: list[dict[str, Any]] = []
    cursor: dict[str, Any] = {}
    while True:
        reply = await api.get(path, **params, **cursor)
        assert reply.status == 200, reply.body
        assert reply.body["object"] == "list"
        seen += reply.body["data"]
        if not reply.body["has_more"]:
            return seen
        assert reply.body["data"], "has_more with an empty page"
        cursor = {"starting_after": reply.body["data"][-1]["id"]}


def assert_event_shape(event: dict[str, Any]) -> None:
    assert set(event) == {"id", "object", "type", "data", "created"}
    assert event["object"] == "event"
    assert event["id"].startswith("evt_")
    assert RFC3339.match(event["created"]), event["created"]
    assert set(event["data"]) == {"object"}


async def test_each_payment_outcome_writes_exactly_one_event_of_its_type(acme: Api) -> None:
    cases = [
        (await pay(acme), "payment.succeeded"),
        (await pay(acme, number="4000000000000002"), "payment.failed"),
        (await pay(acme, WALLET), "payment.requires_action"),
        (await pay(acme, BANK), "payment.processing"),
    ]
    for payment, event_type in cases:
        reply = await acme.get("/v1/events", object=payment["id"])
        assert reply.status == 200, reply.body
        assert reply.body["has_more"] is False
        assert reply.body["url"] == "/v1/events"
        [event] = reply.body["data"]
        assert_event_shape(event)
        assert event["type"] == event_type
        assert event["data"]["object"] == payment  # the object as the API showed it then
        single = await acme.get(f"/v1/events/{event['id']}")
        assert single.status == 200
        assert single.body == event


async def test_a_refund_writes_refund_succeeded_and_keeps_the_payment_snapshot(acme: Api) -> None:
    payment = await pay(acme, amount=5000)
    reply = await acme.post("/v1/refunds", {"payment": payment["id"], "amount": 1200})
    assert reply.status == 200, reply.body
    refund = reply.body
    [event] = (await acme.get("/v1/events", object=refund["id"])).body["data"]
    assert event["type"] == "refund.succeeded"
    assert event["data"]["object"] == refund
    # The payment's own event still shows it as it was when it succeeded: nothing refunded yet.
    [paid] = (await acme.get("/v1/events", object=payment["id"])).body["data"]
    assert paid["type"] == "payment.succeeded"
    assert paid["data"]["object"]["amount_refunded"] == 0
    assert (await acme.get(f"/v1/payments/{payment['id']}")).body["amount_refunded"] == 1200


async def test_manual_capture_writes_requires_capture_then_succeeded(acme: Api) -> None:
    payment = await pay(acme, capture_method="manual")
    assert payment["status"] == "requires_capture"
    captured = await acme.post(f"/v1/payments/{payment['id']}/capture", {})
    assert captured.status == 200, captured.body
    events = (await acme.get("/v1/events", object=payment["id"])).body["data"]
    assert [e["type"] for e in events] == ["payment.succeeded", "payment.requires_capture"]  # newest first
    assert events[0]["data"]["object"] == captured.body


async def test_type_filter_pagination_and_order(acme: Api) -> None:
    made: list[tuple[str, str]] = []  # (object id, event type), oldest first
    for i in range(9):
        if i % 3 == 2:
            made.append(
                ((await pay(acme, number="4000000000000002", amount=100 + i))["id"], "payment.failed")
            )
        else:
            made.append(((await pay(acme, amount=100 + i))["id"], "payment.succeeded"))
    newest_first = list(reversed(made))

    everything = await walk(acme, "/v1/events", limit=2)
    assert [(e["data"]["object"]["id"], e["type"]) for e in everything] == newest_first
    assert len({e["id"] for e in everything}) == len(made)

    for event_type in ("payment.succeeded", "payment.failed"):
        page = await walk(acme, "/v1/events", type=event_type, limit=4)
        assert [e["data"]["object"]["id"] for e in page] == [o for o, t in newest_first if t == event_type]
        assert {e["type"] for e in page} == {event_type}
    assert (await acme.get("/v1/events", type="refund.succeeded")).body["data"] == []

    # has_more is exact: a page that ends on the last event says so.
    full = await acme.get("/v1/events", limit=9)
    assert (len(full.body["data"]), full.body["has_more"]) == (9, False)
    short = await acme.get("/v1/events", limit=8)
    assert (len(short.body["data"]), short.body["has_more"]) == (8, True)

    # ending_before walks back towards the newest, each page in newest-first order.
    ids = [e["id"] for e in everything]
    back: list[str] = []
    cursor = ids[-1]
    while True:
        reply = await acme.get("/v1/events", limit=3, ending_before=cursor)
        assert reply.status == 200
        page_ids = [e["id"] for e in reply.body["data"]]
        back = page_ids + back
        if not reply.body["has_more"]:
            break
        cursor = page_ids[0]
    assert back == ids[:-1]


async def test_list_parameter_errors(acme: Api) -> None:
    assert (await acme.get("/v1/events")).body["data"] == []  # a fresh tenant's log is empty
    for limit in ("0", "101", "abc"):
        reply = await acme.get("/v1/events", limit=limit)
        assert reply.status == 400
        assert reply.body["error"]["param"] == "limit"
    await pay(acme)
    [event] = (await acme.get("/v1/events")).body["data"]
    both = await acme.get("/v1/events", starting_after=event["id"], ending_before=event["id"])
    assert both.status == 400
    missing = await acme.get("/v1/events", starting_after="evt_doesnotexist")
    assert missing.status == 404
    assert (missing.body["error"]["code"], missing.body["error"]["param"]) == (
        "resource_missing",
        "starting_after",
    )
    # A real cursor at the end of the list is an empty page, not a 404.
    end = await acme.get("/v1/events", starting_after=event["id"])
    assert (end.status, end.body["data"], end.body["has_more"]) == (200, [], False)
    too_long = await acme.get("/v1/events", type="x" * 101)
    assert too_long.status == 400
    assert too_long.body["error"]["param"] == "type"
    unknown = await acme.get("/v1/events/evt_doesnotexist")
    assert unknown.status == 404
    assert unknown.body["error"]["type"] == "invalid_request_error"


async def test_another_tenants_events_are_invisible(acme: Api, globex: Api) -> None:
    payment = await pay(acme)
    [event] = (await acme.get("/v1/events")).body["data"]
    theirs = await pay(globex, amount=777)

    reply = await globex.get(f"/v1/events/{event['id']}")
    assert reply.status == 404
    assert reply.body["error"]["code"] == "resource_missing"
    for params in (
        {"starting_after": event["id"]},
        {"ending_before": event["id"]},
    ):
        cursor = await globex.get("/v1/events", **params)
        assert cursor.status == 404, params
    assert (await globex.get("/v1/events", object=payment["id"])).body["data"] == []
    listed = await walk(globex, "/v1/events")
    assert [e["data"]["object"]["id"] for e in listed] == [theirs["id"]]
    # And acme's view is unchanged.
    assert [e["id"] for e in (await acme.get("/v1/events")).body["data"]] == [event["id"]]


class RecordingConnection:
    """Stands in for a connection to capture the exact SQL and arguments list_events sends."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append((sql, args))
        return []


async def test_event_list_queries_use_the_indexes(gw: RunningGateway) -> None:
    async with gw.api[DB_POOL].acquire() as conn:
        await conn.execute(
            """
            INSERT INTO events (id, tenant, type, object_id, data, created)
            SELECT 'evt_gen' || g, (ARRAY['acme', 'globex', 'initech'])[1 + g % 3],
                   (ARRAY['payment.succeeded', 'payment.failed', 'refund.succeeded'])[1 + g % 3],
                   'pay_gen' || (g / 2), '{}'::jsonb, now() - make_interval(secs => g * 30)
            FROM generate_series(1, 9000) AS g
            """
        )
        await conn.execute("ANALYZE events")
        cursor = "evt_gen4500"
        assert await conn.fetchval("SELECT tenant FROM events WHERE id = $1", cursor) == "acme"
        for filters, after, index in (
            (events_store.EventFilters(), None, "events_tenant_created"),
            (events_store.EventFilters(), cursor, "events_tenant_created"),
            (events_store.EventFilters(object_id="pay_gen2250"), None, "events_object"),
        ):
            recorder = RecordingConnection()
            await events_store.list_events(
                recorder,  # type: ignore[arg-type]
                tenant="acme",
                filters=filters,
                limit=10,
                starting_after=after,
                ending_before=None,
            )
            [(sql, args)] = recorder.calls
            plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + sql, *args))
            assert f"using {index} on events" in plan, plan
            assert "Seq Scan" not in plan, plan
