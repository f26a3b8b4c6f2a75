"""Real PostgreSQL for tests: the machine's (PAYHUB_DATABASE_URL) or an embedded pgserver.

Every test gets its own database cloned from a migrated template, so tests never see each
other's rows and need no cleanup order. Cloning a small template takes tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from gateway.store.embedded import with_database
from gateway.store.migrate import migrate


@contextmanager
def admin_url() -> Iterator[str]:
    """The machine's server when PAYHUB_DATABASE_URL is set, else an embedded one for this session.

    The embedded data directory lives outside pytest's numbered temp dirs: pytest deletes old
    ones, which would pull the cluster out from under a concurrent run. As root, pgserver runs
    PostgreSQL as its own user, so the directory must be reachable by it (0755).
    """
    configured = os.environ.get("PAYHUB_DATABASE_URL")
    if configured:
        yield configured
        return
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="payhub-test-pg-"))
    root.chmod(0o755)
    try:
        server = pgserver.get_server(root / "pg", cleanup_mode="stop")
        url: str = server.get_uri()
        yield url
        server.cleanup()
    finally:
        shutil.rmtree(root, ignore_errors=True)


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
