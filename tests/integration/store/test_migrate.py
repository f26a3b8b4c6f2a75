from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateway.store.migrate import (
    MigrationError,
    current_version,
    discover,
    latest_version,
    migrate,
)


@pytest.fixture
async def conn(db_url: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


def test_shipped_migrations_are_well_formed() -> None:
    migrations = discover()
    assert [m.version for m in migrations] == sorted({m.version for m in migrations})
    assert latest_version() == migrations[-1].version


async def test_migrate_twice_is_idempotent(conn: asyncpg.Connection) -> None:
    # The per-test database is cloned from an already migrated template.
    assert await current_version(conn) == latest_version()
    assert await migrate(conn) == []
    assert await migrate(conn) == []
    count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
    assert count == len(discover())


def _write(directory: Path, name: str, sql: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(sql)


async def test_concurrent_migrations_apply_each_file_once(db_url: str, tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    # pg_sleep widens the window in which a second migrator would race without the advisory lock.
    _write(migrations, "0001_one.sql", "CREATE TABLE t_one (id int); SELECT pg_sleep(0.2);")
    _write(migrations, "0002_two.sql", "CREATE TABLE t_two (id int);")
    conns = [await asyncpg.connect(db_url) for _ in range(4)]
    try:
        await conns[0].execute("DROP TABLE schema_migrations")
        results = await asyncio.gather(*(migrate(c, migrations) for c in conns))
    finally:
        for c in conns:
            await c.close()
    applied = sorted(m.version for result in results for m in result)
    assert applied == [1, 2]  # each file applied by exactly one migrator, none failed


async def test_failed_migration_rolls_back_and_reports(conn: asyncpg.Connection, tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    await conn.execute("DROP TABLE schema_migrations")
    _write(migrations, "0001_ok.sql", "CREATE TABLE t_ok (id int);")
    _write(migrations, "0002_bad.sql", "CREATE TABLE t_bad (id int); SELECT no_such_column FROM t_ok;")
    with pytest.raises(MigrationError, match="0002_bad failed"):
        await migrate(conn, migrations)
    assert await current_version(conn) == 1
    assert await conn.fetchval("SELECT to_regclass('t_bad')") is None
    # The advisory lock was released: another migrator is not blocked.
    assert await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0


async def test_edited_migration_is_refused(conn: asyncpg.Connection, tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    await conn.execute("DROP TABLE schema_migrations")
    _write(migrations, "0001_one.sql", "CREATE TABLE t_one (id int);")
    await migrate(conn, migrations)
    _write(migrations, "0001_one.sql", "CREATE TABLE t_one (id bigint);")
    with pytest.raises(MigrationError, match="edited"):
        await migrate(conn, migrations)


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    _write(tmp_path, "1_init.sql", "SELECT 1;")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        discover(tmp_path)
