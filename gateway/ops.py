"""Ops listener (plain HTTP, bind it to loopback or a private network): /metrics, /healthz, /readyz."""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.common import json_response
from gateway.keys import DB_POOL, METRICS, RESOLVER
from gateway.store.migrate import current_version, latest_version
from gateway.workers.resolver import STALL_AFTER

API_APP = web.AppKey("api_app", web.Application)
EXPECTED_SCHEMA = web.AppKey("expected_schema", int)
READY_TIMEOUT = 2.0


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[API_APP][METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Never touches dependencies (a DB outage must not restart us)."""
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers, its schema is at the version this build expects, and the
    resolver completed a pass recently."""
    api = request.app[API_APP]
    pool = api.get(DB_POOL)
    checks: dict[str, str] = {}
    if pool is None:
        checks["database"] = "starting"
    else:
        try:
            async with asyncio.timeout(READY_TIMEOUT), pool.acquire() as conn:
                version = await current_version(conn)
            expected = request.app[EXPECTED_SCHEMA]
            checks["database"] = "ok" if version >= expected else f"schema {version} < {expected}"
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            checks["database"] = "unreachable"
    resolver = api.get(RESOLVER)
    if resolver is not None:
        # Readiness, not liveness: a stalled resolver leaves money unresolved, so say so.
        checks["resolver"] = "ok" if resolver.health.age() < STALL_AFTER else "stalled"
    ready = all(value == "ok" for value in checks.values())
    return json_response(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


def create_ops_app(api: web.Application) -> web.Application:
    app = web.Application()
    app[API_APP] = api
    app[EXPECTED_SCHEMA] = latest_version()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
