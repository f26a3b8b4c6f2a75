"""The queries behind the operator gauges, against real PostgreSQL: what they return, and that they
stay cheap (index scans, never a walk over the whole table)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import orjson
import pytest

from crypto.audit_chain import load_seal_key
from gateway.store.audit import append_event, seal_backlog, seal_batch
from gateway.store.payments import oldest_processing_age


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def add_payments(conn: asyncpg.Connection, rows: list[tuple[str, str, int]]) -> None:
    """(id, status, seconds since last change)"""
    await conn.executemany(
        """
        INSERT INTO payments (id, tenant, status, amount, currency, method, payment_method,
                              capture_method, created, updated)
        VALUES ($1, 'acme', $2, 100, 'CNY', 'card', '{}'::jsonb, 'automatic',
                now() - make_interval(secs => $3), now() - make_interval(secs => $3))
        """,
        [(pid, status, float(age)) for pid, status, age in rows],
    )


async def plan(conn: asyncpg.Connection, query: str) -> str:
    [[explained]] = await conn.fetch(f"EXPLAIN (FORMAT JSON) {query}")
    return orjson.dumps(orjson.loads(explained)).decode()


async def test_oldest_processing_age(conn: asyncpg.Connection) -> None:
    assert await oldest_processing_age(conn) == 0.0
    await add_payments(conn, [("pay_new", "processing", 3), ("pay_done", "succeeded", 5000)])
    assert 3 <= await oldest_processing_age(conn) < 60
    await add_payments(conn, [("pay_old", "processing", 900)])
    assert 900 <= await oldest_processing_age(conn) < 960


async def test_oldest_processing_age_uses_the_partial_index(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """
        INSERT INTO payments (id, tenant, status, amount, currency, method, payment_method, capture_method)
        SELECT 'pay_gen' || g, 'acme', 'succeeded', 100, 'CNY', 'card', '{}'::jsonb, 'automatic'
        FROM generate_series(1, 5000) AS g
        """
    )
    await conn.execute("ANALYZE payments")
    explained = await plan(conn, "SELECT min(updated) FROM payments WHERE status = 'processing'")
    assert "payments_processing" in explained
    assert "Seq Scan" not in explained


async def test_seal_backlog_counts_what_the_sealer_has_not_linked(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    key = load_seal_key(tmp_path / "keys")
    empty = await seal_backlog(conn)
    assert (empty.events, empty.oldest_age) == (0, 0.0)
    for i in range(3):
        await append_event(conn, actor="acme", action="test.event", outcome="success", object_id=f"o{i}")
    backlog = await seal_backlog(conn)
    assert backlog.events == 3
    assert backlog.oldest_age >= 0.0
    # Events written long ago and still unsealed: the age says how far sealing is behind.
    await conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    await conn.execute("UPDATE audit_events SET at = now() - interval '10 minutes'")
    await conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    assert 600 <= (await seal_backlog(conn)).oldest_age < 660
    while (await seal_batch(conn, key, limit=2)).full_batch:
        pass
    assert await seal_backlog(conn) == type(backlog)(0, 0.0)
    await append_event(conn, actor="acme", action="test.event", outcome="success")
    assert (await seal_backlog(conn)).events == 1


async def test_the_sealer_loop_sets_the_sealing_gauges(db_url: str, tmp_path: Path) -> None:
    from gateway.metrics import Metrics
    from gateway.workers.audit_sealer import measure_backlog, run_sealer

    key, metrics = load_seal_key(tmp_path / "keys"), Metrics()
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            for _ in range(4):
                await append_event(conn, actor="acme", action="test.event", outcome="success")
        await measure_backlog(pool, metrics)
        assert metrics.registry.get_sample_value("payhub_audit_unsealed_events") == 4
        assert metrics.registry.get_sample_value("payhub_audit_seal_lag_seconds") is not None
        task = asyncio.create_task(run_sealer(pool, key, 0.05, metrics))
        try:
            for _ in range(100):
                if metrics.registry.get_sample_value("payhub_audit_unsealed_events") == 0:
                    break
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert metrics.registry.get_sample_value("payhub_audit_unsealed_events") == 0
    assert metrics.registry.get_sample_value("payhub_audit_seal_lag_seconds") == 0.0
