"""Application factories: the client API (mTLS) and the ops API (metrics, health)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from config.settings import Settings
from connectors.fx_feed.client import fx_feed_from_settings
from connectors.http import OutboundClient
from connectors.messages.client import MessageSender
from connectors.registry import ConnectorDeps, build_connectors
from crypto.audit_chain import load_seal_key
from crypto.keyring import load_kek
from crypto.pki import PkiPaths
from crypto.stepup import load_otp_key
from gateway import VERSION, ops
from gateway.api import (
    accounts,
    billers,
    callbacks,
    events,
    fx,
    manual_reviews,
    openapi,
    payments,
    ping,
    preferences,
    refunds,
    reminders,
    risk,
    tokens,
    webhooks,
)
from gateway.api.screen import screen_middleware
from gateway.keys import (
    BILLERS,
    CONFIG,
    CONNECTORS,
    DB_POOL,
    FX,
    HOLDS,
    KEYRING,
    MANUAL_REVIEWS,
    MESSAGES,
    METRICS,
    OUTBOUND,
    PAYMENTS,
    PREFERENCES,
    REFUNDS,
    REMINDERS,
    RESOLVER,
    SETTINGS,
    TLS,
    WEBHOOKS,
)
from gateway.logs import flush_logs
from gateway.metrics import Metrics
from gateway.middlewares import context_middleware, error_middleware, identity_middleware, route_templates
from gateway.services.billers import BillerCatalog
from gateway.services.bills import BillPoster
from gateway.services.fx import FxRates, FxService
from gateway.services.holds import Holds
from gateway.services.manual_reviews import ManualReviews
from gateway.services.messages import MessageDispatcher
from gateway.services.payments import PaymentService
from gateway.services.preferences import PreferencesService
from gateway.services.refunds import RefundService
from gateway.services.reminders import ReminderService
from gateway.services.resolver import Budget, Resolver
from gateway.services.risk import RiskService
from gateway.services.settle import Settler
from gateway.services.stepup import StepUp
from gateway.services.webhooks import Dispatcher, Endpoints
from gateway.store.db import open_pool
from gateway.store.keyring import KeyringCache
from gateway.store.velocity_redis import RedisVelocity
from gateway.tls import TlsContextHolder
from gateway.traffic import traffic_context, traffic_middleware
from gateway.workers.audit_sealer import run_sealer
from gateway.workers.daily_recon import run_daily_recon
from gateway.workers.fx import run_fx_rates
from gateway.workers.pruner import run_pruner
from gateway.workers.reminders import run_messages, run_reminders
from gateway.workers.resolver import run_resolver
from gateway.workers.risk import run_challenge_expiry
from gateway.workers.tasks import background
from gateway.workers.webhooks import AiohttpTransport, run_webhooks, webhook_session
from risk.geo import StaticIpCountries

# New encryption picks up a key rotated by another process within this many seconds.
KEYRING_MAX_AGE = 60.0
RESOLVER_INTERVAL = 0.5
PRUNE_INTERVAL = 600.0
DAILY_RECON_INTERVAL = 3600.0
OUTBOUND_CONNECTIONS = 256  # total keep-alive connections to processors and billers
CHALLENGE_EXPIRY_INTERVAL = 5.0


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with open_pool(app[SETTINGS]) as pool:
        app[DB_POOL] = pool
        app[METRICS].watch_pool(lambda: (pool.get_size(), pool.get_idle_size(), pool.get_max_size()))
        yield


async def _audit_sealer(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    key = load_seal_key(settings.keys_dir)
    loop = run_sealer(app[DB_POOL], key, settings.server.audit_seal_interval, app[METRICS])
    async with background(loop, name="audit-sealer"):
        yield


async def _payments(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    keyring = KeyringCache(load_kek(settings.keys_dir, os.environ), max_age=KEYRING_MAX_AGE)
    async with app[DB_POOL].acquire() as conn:
        await keyring.refresh(conn)  # creates the first data keys on a new database
    app[KEYRING] = keyring
    connectors = app[CONNECTORS].payment
    routing = {
        method: settings.routing.for_method(method)
        for method in ("card", "bank_transfer", "wallet", "prepaid")
    }
    settler = Settler(app[METRICS])
    app[PAYMENTS] = PaymentService(app[DB_POOL], keyring, connectors, routing, settler)
    app[REFUNDS] = RefundService(app[DB_POOL], connectors, settler)
    bills = BillPoster(app[DB_POOL], settler, app[BILLERS], app[REFUNDS])
    app[PAYMENTS].bills = bills
    budgets = {
        name: Budget(config.inquiry_budget, config.inquiry_max_age)
        for name, config in settings.connectors.items()
    }
    app[MANUAL_REVIEWS] = ManualReviews(app[DB_POOL], app[PAYMENTS], app[REFUNDS], bills, settler)
    app[RESOLVER] = Resolver(
        app[DB_POOL], app[PAYMENTS], app[REFUNDS], bills, app[METRICS], settler=settler, budgets=budgets
    )
    rates = FxRates()
    app[FX] = FxService(app[DB_POOL], rates, settings.fx)
    app[PAYMENTS].fx = app[FX]
    feed = fx_feed_from_settings(settings, app[OUTBOUND])
    async with (
        _risk(app, settler, rates),  # first: a rule that does not compile stops start-up before any loop
        background(run_fx_rates(feed, rates, settings.fx.refresh_interval), name="fx-rates"),
        background(run_resolver(app[RESOLVER], RESOLVER_INTERVAL, app[METRICS]), name="resolver"),
        background(run_pruner(app[DB_POOL], PRUNE_INTERVAL), name="idempotency-pruner"),
        background(run_daily_recon(app[DB_POOL], app[BILLERS], DAILY_RECON_INTERVAL), name="daily-recon"),
    ):
        yield


async def _notifications(app: web.Application) -> AsyncIterator[None]:
    """Customer preferences, reminders and the message outbox (docs/notifications.md); with
    ``[notifications] enabled``, the bill-reminder scheduler and the message sender loops."""
    settings = app[SETTINGS]
    config = settings.notifications
    app[PREFERENCES] = PreferencesService(app[DB_POOL], default_lead_days=config.default_lead_days)
    app[REMINDERS] = ReminderService(app[DB_POOL], app[BILLERS], config)
    app[MESSAGES] = MessageDispatcher(
        app[DB_POOL], MessageSender(settings, app[OUTBOUND]), config, metrics=app[METRICS]
    )
    if not config.enabled:
        yield
        return
    async with (
        background(run_reminders(app[REMINDERS], config.scheduler_interval, app[METRICS]), name="reminders"),
        background(run_messages(app[MESSAGES], config.message_interval), name="messages"),
    ):
        yield


@contextlib.asynccontextmanager
async def _risk(app: web.Application, settler: Settler, usd: FxRates) -> AsyncIterator[None]:
    """Risk screening, step-up and the review queue, with the loop that expires challenges
    (``amount_usd`` reads the FX rates the payments context keeps fresh); a rule that does not
    compile stops start-up (ConfigError naming it)."""
    settings = app[SETTINGS]
    if not settings.risk.enabled:
        yield
        return
    payments = app[PAYMENTS]
    velocity = None
    if settings.redis_url is not None:  # counters shared in Redis, as the rate limits are
        velocity = RedisVelocity(
            settings.redis_url,
            prefix=f"{settings.limits.redis_key_prefix}:risk",
            timeout=settings.risk.feature_timeout,
        )
    risk = RiskService(
        app[DB_POOL],
        settings.risk,
        tenants=list(settings.tenants),
        usd=usd,
        ip_countries=StaticIpCountries(),
        metrics=app[METRICS],
        velocity=velocity,
    )
    if velocity is not None:  # Redis counters; PostgreSQL's are counted by the settlement statement
        settler.declined = risk.declined
    sender = MessageSender(settings, app[OUTBOUND])
    stepup = StepUp(settings.risk, load_otp_key(settings.keys_dir), sender, app[METRICS])
    holds = Holds(app[DB_POOL], settler, stepup, payments)
    holds.risk = risk
    payments.risk, payments.holds = risk, holds
    app[HOLDS] = holds
    if CONFIG in app:
        app[CONFIG].subscribe(lambda _old, new: risk.reload(new.risk, list(new.tenants)))
    try:
        async with background(
            run_challenge_expiry(holds, CHALLENGE_EXPIRY_INTERVAL), name="challenge-expiry"
        ):
            yield
    finally:
        if velocity is not None:
            await velocity.close()


async def _webhooks(app: web.Application) -> AsyncIterator[None]:
    """Webhook endpoints (the API) and, when ``[webhooks] enabled``, the delivery loop with its
    own HTTP session (not the connectors' client: it resolves and refuses private addresses)."""
    settings = app[SETTINGS]
    config, dev_mode = settings.webhooks, settings.server.dev_mode
    app[WEBHOOKS] = Endpoints(app[DB_POOL], app[KEYRING], config, dev_mode=dev_mode)
    if not config.enabled:
        yield
        return
    async with webhook_session(config, dev_mode=dev_mode) as session:
        dispatcher = Dispatcher(
            app[DB_POOL],
            app[KEYRING],
            config,
            AiohttpTransport(session, timeout=config.timeout),
            app[METRICS],
            dev_mode=dev_mode,
            user_agent=f"payhub-webhooks/{VERSION}",
        )
        async with background(run_webhooks(dispatcher, config), name="webhooks"):
            yield


async def _connectors(app: web.Application) -> AsyncIterator[None]:
    """One outbound HTTP session for every connector, and the connectors themselves."""
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=OUTBOUND_CONNECTIONS), raise_for_status=False
    ) as session:
        app[OUTBOUND] = OutboundClient(session, app[METRICS])
        deps = ConnectorDeps(app[SETTINGS], app[OUTBOUND], app[METRICS])
        connectors = build_connectors(app[SETTINGS], deps)
        await connectors.start()
        app[CONNECTORS] = connectors
        try:
            yield
        finally:
            await connectors.close()


async def _billers(app: web.Application) -> AsyncIterator[None]:
    """The biller catalog, built after the connectors (it asks them what they serve)."""
    app[BILLERS] = await BillerCatalog.build(app[CONNECTORS].billers)
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
        # The screen runs last: refused input still counts against the caller's rate limits.
        middlewares=[
            context_middleware,
            error_middleware,
            identity_middleware,
            traffic_middleware,
            screen_middleware,
        ],
        client_max_size=settings.server.max_body_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics or Metrics()
    app[METRICS].build_info.labels(version=VERSION).set(1)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_audit_sealer)
    app.cleanup_ctx.append(_connectors)
    app.cleanup_ctx.append(_billers)  # the biller catalog, from the connectors' describe()
    app.cleanup_ctx.append(_payments)
    app.cleanup_ctx.append(_notifications)  # preferences, reminders, the message outbox
    app.cleanup_ctx.append(_webhooks)  # endpoints and the delivery loop (after the keyring)
    app.cleanup_ctx.append(_tls)
    app.cleanup_ctx.append(traffic_context)  # limiter storage (Redis pool) and the lag monitor
    app.on_startup.append(_bind_route_metrics)
    app.on_cleanup.append(_flush_logs)  # after every cleanup context: their last lines too
    ping.setup(app)
    payments.setup(app)
    tokens.setup(app)
    refunds.setup(app)
    accounts.setup(app)
    events.setup(app)
    billers.setup(app)
    callbacks.setup(app)
    risk.setup(app)
    manual_reviews.setup(app)
    preferences.setup(app)
    reminders.setup(app)
    fx.setup(app)
    webhooks.setup(app)
    openapi.setup(app)
    return app


async def _bind_route_metrics(app: web.Application) -> None:
    """Request metrics per route template and method, made once at start-up (the router is frozen)."""
    metrics = app[METRICS]
    for template, method in route_templates(app):
        metrics.http_route(template, method)


async def _flush_logs(app: web.Application) -> None:
    """Log lines are written once per event-loop turn; write what is pending as the app stops."""
    flush_logs()


def create_ops_app(api: web.Application) -> web.Application:
    """Plain-HTTP operations listener sharing the API app's metrics and pool."""
    return ops.create_ops_app(api)
