"""Velocity buckets: the feature read counts only the windows it needs, and old buckets are pruned."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.store.risk import RiskKeys, feature_rider, prune_counters, read_features


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def test_the_read_counts_its_windows_and_old_buckets_are_pruned(conn: asyncpg.Connection) -> None:
    # Three days of minute buckets (one payment each) and hour buckets (sixty each) for one IP, as a
    # busy key leaves them: the read must count the last hour and the last day only.
    await conn.execute(
        """
        INSERT INTO risk_counters (tenant, kind, key, grain, bucket, count)
        SELECT 'acme', 'ip', '203.0.113.9', 'm', date_trunc('minute', now()) - make_interval(mins => n), 1
        FROM generate_series(0, 3 * 1440 - 1) AS n
        UNION ALL
        SELECT 'acme', 'ip', '203.0.113.9', 'h', date_trunc('hour', now()) - make_interval(hours => n), 60
        FROM generate_series(0, 3 * 24 - 1) AS n
        """
    )
    keys = RiskKeys(pairs=(("ip", "203.0.113.9"),))
    read = await read_features(conn, feature_rider("acme", keys, []))
    ip = read.velocity["ip"]
    assert ip["m1"]["count"] == 2  # this minute and the previous one
    assert ip["h1"]["count"] == 60  # the minute buckets of the last hour
    assert ip["d1"]["count"] == 24 * 60  # the hour buckets of the last day
    deleted = 0
    while batch := await prune_counters(conn, batch=1000):
        deleted += batch
    assert deleted == (3 * 1440 - 25 * 60) + (3 * 24 - 25)
    assert await read_features(conn, feature_rider("acme", keys, [])) == read
