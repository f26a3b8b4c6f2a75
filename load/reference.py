"""The reference server of the benchmark (DESIGN §10): aiohttp + the same mutual TLS + one asyncpg
``INSERT … RETURNING`` per request. The gateway's full payment pipeline is measured against it.

    python -m load.reference --port 8444
"""

from __future__ import annotations

import argparse
import asyncio

import asyncpg
import orjson
from aiohttp import web

from config.settings import load_settings
from crypto.pki import PkiPaths
from gateway.server import run_loop
from gateway.store.db import resolve_database_url
from gateway.tls import build_server_context

POOL = web.AppKey("pool", asyncpg.Pool)


async def create_payment(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[POOL].acquire() as conn:
        row_id = await conn.fetchval(
            "INSERT INTO bench_reference (body) VALUES ($1::jsonb) RETURNING id", body.decode()
        )
    return web.Response(
        body=orjson.dumps({"id": f"ref_{row_id}", "status": "succeeded"}), content_type="application/json"
    )


async def serve(port: int) -> None:
    settings = load_settings()
    url = await resolve_database_url(settings)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=settings.database.pool_max)
    assert pool is not None
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_reference (id bigserial PRIMARY KEY, body jsonb NOT NULL)"
        )
    app = web.Application()
    app[POOL] = pool
    app.router.add_post("/v1/payments", create_payment)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = build_server_context(PkiPaths(settings.pki_dir))
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark reference server")
    parser.add_argument("--port", type=int, default=8444)
    run_loop(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
