"""Typed application and request keys, declared in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from config.settings import Settings
from connectors.http import OutboundClient
from connectors.registry import Connectors
from gateway.identity import Identity
from gateway.metrics import Metrics
from gateway.reload import ConfigReloader
from gateway.services.billers import BillerCatalog
from gateway.services.fx import FxService
from gateway.services.holds import Holds
from gateway.services.manual_reviews import ManualReviews
from gateway.services.messages import MessageDispatcher
from gateway.services.payments import PaymentService
from gateway.services.preferences import PreferencesService
from gateway.services.refunds import RefundService
from gateway.services.reminders import ReminderService
from gateway.services.resolver import Resolver
from gateway.services.webhooks import Endpoints as WebhookEndpoints
from gateway.store.keyring import KeyringCache
from gateway.tls import TlsContextHolder

SETTINGS = web.AppKey("settings", Settings)
# The settings as last reloaded (SIGHUP); the identity check reads its tenant table per request.
CONFIG = web.AppKey("config", ConfigReloader)
METRICS = web.AppKey("metrics", Metrics)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
TLS = web.AppKey("tls", TlsContextHolder)
KEYRING = web.AppKey("keyring", KeyringCache)
CONNECTORS = web.AppKey("connectors", Connectors)
BILLERS = web.AppKey("billers", BillerCatalog)
PAYMENTS = web.AppKey("payments", PaymentService)
REFUNDS = web.AppKey("refunds", RefundService)
RESOLVER = web.AppKey("resolver", Resolver)
MANUAL_REVIEWS = web.AppKey("manual_reviews", ManualReviews)  # the operators' manual queue
FX = web.AppKey("fx", FxService)  # FX rates and quotes
HOLDS = web.AppKey("holds", Holds)  # held payments: step-up answers and the review queue
PREFERENCES = web.AppKey("preferences", PreferencesService)  # customers' notification preferences
REMINDERS = web.AppKey("reminders", ReminderService)  # bill reminders, low-balance alerts, scheduler
MESSAGES = web.AppKey("messages", MessageDispatcher)  # SMS / e-mail outbox sender
OUTBOUND = web.AppKey("outbound", OutboundClient)  # the one outbound HTTP client
WEBHOOKS = web.AppKey("webhooks", WebhookEndpoints)  # webhook endpoints and redelivery

# Request-scoped values (set by middlewares).
REQUEST_ID = web.RequestKey("request_id", str)
IDENTITY = web.RequestKey("identity", Identity)

__all__ = [
    "BILLERS",
    "CONFIG",
    "CONNECTORS",
    "DB_POOL",
    "FX",
    "HOLDS",
    "IDENTITY",
    "KEYRING",
    "MANUAL_REVIEWS",
    "MESSAGES",
    "METRICS",
    "OUTBOUND",
    "PAYMENTS",
    "PREFERENCES",
    "REFUNDS",
    "REMINDERS",
    "REQUEST_ID",
    "RESOLVER",
    "SETTINGS",
    "TLS",
    "WEBHOOKS",
    "Identity",
]
