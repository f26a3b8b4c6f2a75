"""The audit trail against real PostgreSQL: append-only, commit-order-safe sealing, tamper detection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from crypto.audit_chain import SealKey, load_seal_key
from gateway.store.audit import append_event, seal_batch, verify_chain


@pytest.fixture
def key(tmp_path: Path) -> SealKey:
    return load_seal_key(tmp_path / "keys")


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def add(conn: asyncpg.Connection, n: int, *, tenant: str = "acme") -> list[int]:
    return [
        await append_event(
            conn,
            actor=tenant,
            action="test.event",
            outcome="success",
            tenant=tenant,
            object_id=f"obj_{i}",
            details={"i": i},
        )
        for i in range(n)
    ]


async def seal_all(conn: asyncpg.Connection, key: SealKey) -> int:
    total = 0
    while True:
        result = await seal_batch(conn, key, limit=7)
        total += result.sealed
        if not result.full_batch:
            return total


async def test_events_are_append_only(conn: asyncpg.Connection, key: SealKey) -> None:
    await add(conn, 3)
    await seal_all(conn, key)
    for statement in (
        "UPDATE audit_events SET outcome = 'failure'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events CASCADE",
        "UPDATE audit_chain SET hash = prev_hash",
        "DELETE FROM audit_checkpoints",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)


async def test_an_event_committed_late_is_still_sealed_exactly_once(
    db_url: str, conn: asyncpg.Connection, key: SealKey
) -> None:
    slow = await asyncpg.connect(db_url)
    try:
        transaction = slow.transaction()
        await transaction.start()
        late_seq = await append_event(
            slow, actor="acme", action="slow", outcome="success"
        )  # low seq, uncommitted
        later = await add(conn, 5)  # higher seqs, committed first
        assert min(later) > late_seq
        assert await seal_all(conn, key) == 5  # the in-flight event is neither sealed nor skipped for good
        await transaction.commit()
        assert await seal_all(conn, key) == 1
        assert await seal_all(conn, key) == 0
    finally:
        await slow.close()
    report = await verify_chain(conn, key)
    assert report.ok, report
    assert (report.sealed, report.unsealed) == (6, 0)
    chained = await conn.fetchval("SELECT count(DISTINCT seq) FROM audit_chain")
    assert chained == 6


async def test_concurrent_writers_and_sealers(db_url: str, key: SealKey) -> None:
    writers = [await asyncpg.connect(db_url) for _ in range(8)]
    sealers = [await asyncpg.connect(db_url) for _ in range(2)]
    done = asyncio.Event()

    async def write(c: asyncpg.Connection) -> None:
        for i in range(40):
            async with c.transaction():
                await append_event(c, actor="acme", action="w", outcome="success", details={"i": i})
                if i % 5 == 0:
                    await asyncio.sleep(0.005)  # hold some transactions open across a seal

    async def seal(c: asyncpg.Connection) -> None:
        while not done.is_set():
            await seal_batch(c, key, limit=50)
            await asyncio.sleep(0.002)

    try:
        sealing = [asyncio.create_task(seal(c)) for c in sealers]
        await asyncio.gather(*(write(c) for c in writers))
        done.set()
        await asyncio.gather(*sealing)
        await seal_all(sealers[0], key)
        report = await verify_chain(sealers[0], key)
    finally:
        for c in writers + sealers:
            await c.close()
    assert report.ok, report
    assert (report.sealed, report.unsealed) == (320, 0)


TAMPERING = {
    "event content changed after sealing": "UPDATE audit_events SET outcome = 'failure' WHERE seq = {seq}",
    "sealed event deleted": "DELETE FROM audit_events WHERE seq = {seq}",
    "previous-hash link broken": "UPDATE audit_chain SET prev_hash = '\\x{zeros}' WHERE seq = {seq}",
    "chain position missing": "DELETE FROM audit_chain WHERE seq = {seq}",
}


@pytest.mark.parametrize("reason", sorted(TAMPERING))
async def test_verify_names_the_first_tampered_row(
    conn: asyncpg.Connection, key: SealKey, reason: str
) -> None:
    seqs = await add(conn, 10)
    await seal_all(conn, key)
    assert (await verify_chain(conn, key)).ok
    target = seqs[4]
    position = await conn.fetchval("SELECT position FROM audit_chain WHERE seq = $1", target)
    # Someone with owner rights switches triggers and foreign keys off and edits history.
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(TAMPERING[reason].format(seq=target, zeros="ab" * 32))
    await conn.execute("SET session_replication_role = origin")
    report = await verify_chain(conn, key)
    assert report.tampered is not None
    assert report.tampered.reason == reason
    assert report.tampered.position == position
    assert report.sealed == position - 1


async def test_forged_tail_and_foreign_key_are_detected(
    conn: asyncpg.Connection, key: SealKey, tmp_path: Path
) -> None:
    await add(conn, 3)
    await seal_all(conn, key)
    # A second, unknown key signs a checkpoint over new events: verify with the real key refuses it.
    other = load_seal_key(tmp_path / "other")
    await add(conn, 2)
    await seal_all(conn, other)
    report = await verify_chain(conn, key)
    assert report.tampered is not None
    assert report.tampered.reason == "checkpoint signature invalid"
    assert report.tampered.position == 5


async def test_unsealed_tail_is_reported_not_failed(conn: asyncpg.Connection, key: SealKey) -> None:
    await add(conn, 4)
    await seal_all(conn, key)
    await add(conn, 3)
    report = await verify_chain(conn, key)
    assert report.ok
    assert (report.sealed, report.unsealed, report.checkpoints) == (4, 3, 1)
