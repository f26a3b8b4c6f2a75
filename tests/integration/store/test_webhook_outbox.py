"""The webhook outbox in PostgreSQL: the fan-out trigger and concurrent claims (real database)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from crypto.keyring import LocalKek
from crypto.webhook_secrets import new_webhook_secret, seal_secret
from gateway.ids import new_id
from gateway.store import webhooks as store
from gateway.store.keyring import load_keyring
from gateway.store.payments import insert_event
from gateway.store.types import Connection

KEK = LocalKek(bytes(range(32)))
DAY = 86400.0


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def _endpoint(conn: Connection, tenant: str, events: Sequence[str], *, window: float = DAY) -> str:
    keyring = await load_keyring(conn, KEK)
    endpoint_id = new_id("we")
    sealed = seal_secret(keyring, tenant=tenant, endpoint_id=endpoint_id, secret=new_webhook_secret())
    await store.insert_endpoint(
        conn,
        endpoint_id=endpoint_id,
        tenant=tenant,
        url="https://example.com/hook",
        enabled_events=events,
        description=None,
        secret=sealed,
        retry_window=window,
    )
    return endpoint_id


async def _event(conn: Connection, tenant: str, type_: str) -> str:
    event_id = new_id("evt")
    await insert_event(
        conn, event_id=event_id, tenant=tenant, type_=type_, object_id="pay_1", data='{"id": "pay_1"}'
    )
    return event_id


async def _deliveries(conn: Connection) -> set[tuple[str, str]]:
    rows = await conn.fetch("SELECT event_id, endpoint_id FROM webhook_deliveries")
    return {(r["event_id"], r["endpoint_id"]) for r in rows}


async def test_an_event_without_endpoints_creates_no_delivery(conn: asyncpg.Connection) -> None:
    await _event(conn, "acme", "payment.succeeded")
    assert await _deliveries(conn) == set()


async def test_trigger_fans_out_to_subscribed_endpoints_of_the_same_tenant(conn: asyncpg.Connection) -> None:
    succeeded = await _endpoint(conn, "acme", ["payment.succeeded"])
    everything = await _endpoint(conn, "acme", ["*"])
    refunds = await _endpoint(conn, "acme", ["refund.succeeded", "refund.failed"])
    other_tenant = await _endpoint(conn, "globex", ["*"])
    deleted = await _endpoint(conn, "acme", ["*"])
    assert await store.delete_endpoint(conn, tenant="acme", endpoint_id=deleted)

    paid = await _event(conn, "acme", "payment.succeeded")
    refunded = await _event(conn, "acme", "refund.failed")
    failed = await _event(conn, "acme", "payment.failed")
    globex = await _event(conn, "globex", "payment.succeeded")

    assert await _deliveries(conn) == {
        (paid, succeeded),
        (paid, everything),
        (refunded, everything),
        (refunded, refunds),
        (failed, everything),
        (globex, other_tenant),
    }
    row = await conn.fetchrow(
        "SELECT status, attempts, deadline - created AS window, tenant FROM webhook_deliveries "
        "WHERE event_id = $1 AND endpoint_id = $2",
        paid,
        succeeded,
    )
    assert row is not None
    assert (row["status"], row["attempts"], row["tenant"]) == ("pending", 0, "acme")
    assert abs(row["window"].total_seconds() - DAY) < 60


async def test_the_trigger_rolls_back_with_the_event(conn: asyncpg.Connection) -> None:
    await _endpoint(conn, "acme", ["*"])
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await _event(conn, "acme", "payment.succeeded")
            raise RuntimeError("the change failed")
    assert await _deliveries(conn) == set()


async def test_concurrent_claimers_never_get_the_same_attempt(db_url: str) -> None:
    conns = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        await _endpoint(conns[0], "acme", ["*"])
        await _endpoint(conns[0], "acme", ["payment.succeeded"])
        events = [await _event(conns[0], "acme", "payment.succeeded") for _ in range(60)]

        async def claim_all(conn: Connection) -> list[store.ClaimedDelivery]:
            got: list[store.ClaimedDelivery] = []
            while batch := await store.claim_due(conn, lease=60.0, limit=7, per_endpoint=8):
                got.extend(batch)
            return got

        results = await asyncio.gather(*(claim_all(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    claimed = [d for result in results for d in result]
    assert len(claimed) == 2 * len(events)
    counts = Counter((d.event_id, d.endpoint_id, d.attempt) for d in claimed)
    assert max(counts.values()) == 1
    assert {d.attempt for d in claimed} == {1}
    assert sum(1 for result in results if result) >= 2  # the work was actually shared


async def test_lease_result_guard_and_retry(conn: asyncpg.Connection) -> None:
    await _endpoint(conn, "acme", ["*"])
    event_id = await _event(conn, "acme", "payment.succeeded")
    [first] = await store.claim_due(conn, lease=60.0, limit=10, per_endpoint=8)
    assert first.event_id == event_id and first.attempt == 1
    # leased: nobody else takes it
    assert await store.claim_due(conn, lease=60.0, limit=10, per_endpoint=8) == []

    # The lease runs out (the worker died): the next claim makes attempt 2, and a late answer to
    # attempt 1 changes nothing.
    await conn.execute("UPDATE webhook_deliveries SET locked_until = now() - interval '1 second'")
    [second] = await store.claim_due(conn, lease=60.0, limit=10, per_endpoint=8)
    assert second.attempt == 2
    assert not await store.record_delivered(conn, delivery_id=first.id, attempt=1, status=200)
    assert (
        await store.record_failed(
            conn, delivery_id=second.id, attempt=2, backoff=30.0, status=500, error="HTTP 500"
        )
        == "pending"
    )
    assert await store.claim_due(conn, lease=60.0, limit=10, per_endpoint=8) == []  # backing off
    row = await conn.fetchrow("SELECT next_attempt - now() AS wait, last_status FROM webhook_deliveries")
    assert row is not None and 25 < row["wait"].total_seconds() <= 30 and row["last_status"] == 500


async def test_past_the_deadline_a_failure_is_dead(conn: asyncpg.Connection) -> None:
    await _endpoint(conn, "acme", ["*"], window=0.001)
    await _event(conn, "acme", "payment.succeeded")
    await asyncio.sleep(0.01)
    [claimed] = await store.claim_due(conn, lease=60.0, limit=10, per_endpoint=8)
    status = await store.record_failed(
        conn, delivery_id=claimed.id, attempt=claimed.attempt, backoff=5.0, status=None, error="timeout"
    )
    assert status == "dead"
    assert await store.dead_count(conn) == 1


async def test_a_dead_endpoints_backlog_does_not_starve_a_healthy_one(conn: asyncpg.Connection) -> None:
    """Claims are per endpoint (at most ``per_endpoint`` each): the older backlog of one endpoint
    leaves room for the other's newest delivery in the same claim."""
    await _endpoint(conn, "acme", ["payment.failed"])  # its receiver is down: a backlog builds up
    healthy = await _endpoint(conn, "acme", ["payment.succeeded"])
    for _ in range(40):
        await _event(conn, "acme", "payment.failed")
    fresh = await _event(conn, "acme", "payment.succeeded")
    claimed = await store.claim_due(conn, lease=60.0, limit=10, per_endpoint=4)
    by_endpoint = Counter(c.endpoint_id for c in claimed)
    assert by_endpoint[healthy] == 1 and [c.event_id for c in claimed if c.endpoint_id == healthy] == [fresh]
    assert sorted(by_endpoint.values()) == [1, 4]
