"""Connection pool and database URL resolution."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from config.settings import Settings
from gateway.store.embedded import start_embedded
from gateway.store.migrate import migrate


async def resolve_database_url(settings: Settings) -> str:
    """The configured URL, or the embedded server's (started off the event loop)."""
    if settings.database.url:
        return settings.database.url
    return await asyncio.to_thread(start_embedded, settings.pg_dir)


async def _lean_reset(conn: asyncpg.Connection) -> None:
    """What a released connection needs here, without asyncpg's default reset round trip.

    asyncpg's default runs ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on every
    release: one more round trip each time a request gives a connection back. payhub keeps no
    session state on pooled connections (no SET, no LISTEN, cursors only inside transactions,
    session advisory locks released in ``finally``), so only an unfinished transaction — an
    exception escaping mid-transaction — needs undoing.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(settings: Settings, url: str) -> asyncpg.Pool:
    db = settings.database
    pool = await asyncpg.create_pool(
        url,
        min_size=db.pool_min,
        max_size=db.pool_max,
        command_timeout=db.command_timeout,
        statement_cache_size=db.statement_cache_size,
        reset=_lean_reset,
        # JIT compilation costs more than it saves on short OLTP queries.
        server_settings={"application_name": "payhub", "jit": "off"},
    )
    assert pool is not None  # create_pool only returns None when awaited without init
    return pool


@asynccontextmanager
async def open_pool(settings: Settings, *, run_migrations: bool = True) -> AsyncIterator[asyncpg.Pool]:
    url = await resolve_database_url(settings)
    pool = await create_pool(settings, url)
    try:
        if run_migrations:
            async with pool.acquire() as conn:
                await migrate(conn)
        yield pool
    finally:
        await pool.close()
