"""Application factories: the client API (mTLS) and the ops API (metrics, health)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from config.settings import Settings
from crypto.audit_chain import load_seal_key
from crypto.pki import PkiPaths
from gateway import ops
from gateway.api import ping
from gateway.keys import DB_POOL, METRICS, SETTINGS, TLS
from gateway.metrics import Metrics
from gateway.middlewares import context_middleware, error_middleware, identity_middleware
from gateway.store.db import open_pool
from gateway.tls import TlsContextHolder
from gateway.workers.audit_sealer import run_sealer
from gateway.workers.tasks import background

VERSION = "0.1.0"


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with open_pool(app[SETTINGS]) as pool:
        app[DB_POOL] = pool
        app[METRICS].watch_pool(lambda: (pool.get_size(), pool.get_idle_size(), pool.get_max_size()))
        yield


async def _audit_sealer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    key = load_seal_key(settings.keys_dir)
    loop = run_sealer(app[DB_POOL], key, settings.server.audit_seal_interval)
    async with background(loop, name="audit-sealer"):
        yield


async def _tls(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    holder = TlsContextHolder(PkiPaths(settings.pki_dir), app[METRICS])
    app[TLS] = holder
    async with background(holder.watch(settings.server.tls_reload_interval), name="tls-reload"):
        yield


def create_app(settings: Settings, *, metrics: Metrics | None = None) -> web.Application:
    """The client API. Resources (pool, TLS material, background loops) live in cleanup_ctx."""
    app = web.Application(
        middlewares=[context_middleware, error_middleware, identity_middleware],
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app[METRICS].build_info.labels(version=VERSION).set(1)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_audit_sealer)
    app.cleanup_ctx.append(_tls)
    ping.setup(app)
    return app


def create_ops_app(api: web.Application) -> web.Application:
    """Plain-HTTP operations listener sharing the API app's metrics and pool."""
    return ops.create_ops_app(api)
