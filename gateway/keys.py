"""Typed application and request keys, declared in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from config.settings import Settings
from gateway.identity import Identity
from gateway.metrics import Metrics
from gateway.tls import TlsContextHolder

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
TLS = web.AppKey("tls", TlsContextHolder)

# Request-scoped values (set by middlewares).
REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", Identity)

__all__ = ["DB_POOL", "IDENTITY", "METRICS", "REQUEST_ID", "SETTINGS", "TLS", "Identity"]
