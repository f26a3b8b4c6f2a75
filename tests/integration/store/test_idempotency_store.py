"""Idempotency keys in PostgreSQL: claim semantics and retention pruning."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.store import idempotency
from gateway.store.idempotency import Claimed, InProgress, Mismatch, Replay


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def claim(conn: asyncpg.Connection, key: str, body: bytes = b"a") -> object:
    return await idempotency.claim(
        conn, tenant="acme", key=key, method="POST", path="/v1/payments", request_hash=body.ljust(32, b"0")
    )


async def test_claim_finish_replay_mismatch_and_takeover(conn: asyncpg.Connection) -> None:
    assert isinstance(await claim(conn, "k1"), Claimed)
    assert isinstance(await claim(conn, "k1"), InProgress)
    assert isinstance(await claim(conn, "k1", b"b"), Mismatch)
    await idempotency.set_recovery_point(
        conn, tenant="acme", key="k1", point="attempt_created", object_id="pay_1"
    )
    await idempotency.abandon(conn, tenant="acme", key="k1")  # the first request crashed after recording
    assert isinstance(await claim(conn, "k1", b"b"), Mismatch)  # money may have moved: the body is bound
    again = await claim(conn, "k1")
    assert isinstance(again, Claimed)  # a retry takes over, resuming from the recovery point
    await idempotency.finish(conn, tenant="acme", key="k1", status=200, body=b'{"id":"pay_1"}')
    replay = await claim(conn, "k1")
    assert replay == Replay(200, b'{"id":"pay_1"}')
    other_tenant = await idempotency.claim(
        conn, tenant="globex", key="k1", method="POST", path="/v1/payments", request_hash=b"a".ljust(32, b"0")
    )
    assert isinstance(other_tenant, Claimed)  # keys are scoped per tenant


async def test_a_failure_before_any_recovery_point_releases_the_key(conn: asyncpg.Connection) -> None:
    assert isinstance(await claim(conn, "k2"), Claimed)
    await idempotency.abandon(conn, tenant="acme", key="k2")  # the hub failed before recording anything
    assert await conn.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k2'") == 0
    assert isinstance(await claim(conn, "k2", b"corrected"), Claimed)  # not burned: 422 no more


async def test_prune_keeps_recent_and_in_flight_keys(conn: asyncpg.Connection) -> None:
    for key in ("old-done", "old-abandoned", "old-running", "new-done"):
        await claim(conn, key)
    await idempotency.finish(conn, tenant="acme", key="old-done", status=200, body=b"{}")
    await idempotency.finish(conn, tenant="acme", key="new-done", status=200, body=b"{}")
    await idempotency.set_recovery_point(
        conn, tenant="acme", key="old-abandoned", point="attempt_created", object_id="pay_1"
    )
    await idempotency.abandon(conn, tenant="acme", key="old-abandoned")
    await conn.execute(
        "UPDATE idempotency_keys SET created = now() - interval '49 hours' WHERE key LIKE 'old-%'"
    )
    await conn.execute(
        "UPDATE idempotency_keys SET locked_until = now() + interval '1 minute' WHERE key = 'old-running'"
    )
    assert await idempotency.prune(conn, older_than_hours=48) == 2
    left = {row["key"] for row in await conn.fetch("SELECT key FROM idempotency_keys")}
    assert left == {"old-running", "new-done"}
