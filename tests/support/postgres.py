"""Real PostgreSQL for tests: the machine's (PAYHUB_DATABASE_URL) or an embedded pgserver.

Every test gets its own database cloned from a migrated template, so tests never see each
other's rows and need no cleanup order. Cloning a small template takes tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import asyncpg

from gateway.store.embedded import with_database
from gateway.store.migrate import migrate


def admin_url(tmp_root: Path) -> str:
    """The machine's server when PAYHUB_DATABASE_URL is set, else an embedded one under ``tmp_root``."""
    configured = os.environ.get("PAYHUB_DATABASE_URL")
    if configured:
        return configured
    import pgserver

    # As root, pgserver runs PostgreSQL as its own user, which must be able to reach the data
    # directory; pytest's temporary root is private (0700), so open the path down to it.
    for directory in (tmp_root, *tmp_root.parents):
        if directory == Path(tempfile.gettempdir()):
            break
        directory.chmod(directory.stat().st_mode | 0o711)
    server = pgserver.get_server(tmp_root / "pg", cleanup_mode="stop")
    url: str = server.get_uri()
    return url


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create_template(url: str) -> str:
    name = f"payhub_tpl_{uuid.uuid4().hex[:12]}"

    async def build() -> None:
        await _admin(url, f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(build())
    return name


def drop_database(url: str, name: str) -> None:
    asyncio.run(_admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def clone_database(url: str, template: str) -> str:
    name = f"payhub_t_{uuid.uuid4().hex[:12]}"
    await _admin(url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


async def drop_database_async(url: str, name: str) -> None:
    await _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
