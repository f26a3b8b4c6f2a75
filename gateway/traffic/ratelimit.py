"""Request-rate limits (the `limits` library): per tenant and route class, per customer and payer IP.

Where the budgets live: in-process memory by default; in Redis when ``PAYHUB_REDIS_URL`` is set,
so every gateway process draws from one shared budget. Strategies (docs/traffic.md):

* tenant budgets use ``limits.strategy`` (moving window by default): exact, "at most N in any
  window", so a rate of 50/s with bursts of 100 is written ``"100/2 seconds"``. Its cost grows
  with N (a timestamp per request in the window), which is fine for a few keys per tenant;
* customer and payer-IP budgets always use the sliding-window counter: two counters per key, O(1)
  whatever the limit, because their number of keys is unbounded.

Redis failure policy, Stripe-like *fail open*: a Redis error must not take payments down. The
error is counted (``payhub_rate_limit_storage_errors_total``) and logged once, and for
``limits.redis_fallback`` seconds every check runs against a per-process memory budget instead
(still limited, only no longer shared), then Redis is tried again.

    RateLimited (gateway.errors)   429 rate_limit_error, Retry-After + RateLimit-* headers
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from limits.util import WindowStats

from config.settings import UNLIMITED, LimitSettings, Settings
from gateway import errors
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.traffic.classes import RouteClass

log = get_logger("gateway.traffic")

# What a broken or slow Redis raises through limits (wrap_exceptions=True) or, rarely, directly.
_STORAGE_ERRORS = (StorageError, ConnectionError, OSError, TimeoutError)
_MAX_ID_CHARS = 128  # longer customer ids are hashed so a caller cannot grow our keys
_STRATEGIES: dict[str, Callable[[Storage], RateLimiter]] = {
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
}


class SweptMemoryStorage(MemoryStorage):
    """limits' MemoryStorage, sweeping expired keys at most once a second.

    The stock storage starts a sweep of *every* key after each hit (with a thread hop per
    moving-window key), so its cost per request grows with the number of customers. Expiry is
    also checked lazily on each read, so sweeping less often only delays freeing memory.
    """

    SWEEP_INTERVAL = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    async def _MemoryStorage__schedule_expiry(self) -> None:  # overrides the name-mangled hook
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_INTERVAL
        await super()._MemoryStorage__schedule_expiry()  # type: ignore[misc]

    async def close(self) -> None:
        timer = self.timer
        if timer is not None and not timer.done():
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer


def _limits_uri(url: str) -> str:
    """``redis://…`` → ``async+redis://…`` (limits' scheme for its asyncio storage)."""
    if url.startswith("unix://"):
        return "async+redis+unix://" + url.removeprefix("unix://")
    return "async+" + url


@contextlib.asynccontextmanager
async def open_storage(settings: Settings) -> AsyncIterator[Storage]:
    """The budget store for this process: Redis when configured, else memory. Closed on exit."""
    limits = settings.limits
    if settings.redis_url is None:
        memory = SweptMemoryStorage()
        try:
            yield memory
        finally:
            await memory.close()
        return
    # A bounded pool that waits at most redis_timeout for a connection: under a flood, callers
    # queue briefly instead of opening thousands of connections; a longer wait counts as Redis down.
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=limits.redis_max_connections,
        timeout=limits.redis_timeout,
        socket_timeout=limits.redis_timeout,
        socket_connect_timeout=limits.redis_timeout,
    )
    client_options: dict[str, Any] = {"connection_pool": pool}  # handed to redis.asyncio.Redis
    storage = RedisStorage(
        _limits_uri(settings.redis_url),
        implementation="redispy",
        key_prefix=limits.redis_key_prefix,
        wrap_exceptions=True,
        **client_options,
    )
    try:
        yield storage
    finally:
        await pool.aclose()


@dataclass(frozen=True, slots=True)
class Quota:
    """The state of the budget a request drew from, for the RateLimit-* response headers."""

    limit: int
    remaining: int
    reset_after: int  # seconds until the window frees capacity

    def headers(self) -> dict[str, str]:
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_after),
        }


@dataclass(frozen=True, slots=True)
class Budget:
    name: str  # route class, or "default" for classes sharing the tenant's default budget
    items: tuple[RateLimitItem, ...]


def _items(rate: str) -> tuple[RateLimitItem, ...] | None:
    return None if rate == UNLIMITED else tuple(parse_many(rate))


def _quota(item: RateLimitItem, stats: WindowStats, now: float) -> Quota:
    return Quota(item.amount, max(0, stats.remaining), max(0, math.ceil(stats.reset_time - now)))


def _safe_id(value: str) -> str:
    if len(value) <= _MAX_ID_CHARS:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


class RateLimits:
    """Checks budgets against the shared storage, falling back to process memory while it fails."""

    def __init__(self, settings: LimitSettings, storage: Storage, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._shared = not isinstance(storage, MemoryStorage)
        self._local_storage = storage if isinstance(storage, SweptMemoryStorage) else SweptMemoryStorage()
        strategy = _STRATEGIES[settings.strategy]
        self._tenant: tuple[RateLimiter, RateLimiter] = (strategy(storage), strategy(self._local_storage))
        self._payer: tuple[RateLimiter, RateLimiter] = (
            SlidingWindowCounterRateLimiter(storage),
            SlidingWindowCounterRateLimiter(self._local_storage),
        )
        self._budgets: dict[tuple[str, RouteClass], Budget | None] = {}
        self._customer = _items(settings.per_customer)
        self._customer_ip = _items(settings.per_customer_ip)
        self._fallback_until = 0.0

    async def close(self) -> None:
        await self._local_storage.close()

    async def check_storage(self) -> bool:
        """At start-up: is the shared storage reachable? If not, start in fallback (logged, counted)."""
        if not self._shared:
            return True
        try:
            healthy = await self._tenant[0].storage.check()
        except _STORAGE_ERRORS as exc:
            self._degrade(exc)
            return False
        if not healthy:
            self._degrade(ConnectionError("PING failed"))
        return healthy

    def budget(self, tenant: str, route_class: RouteClass) -> Budget | None:
        """The tenant's budget for a route class (None: unlimited); resolved once, then cached."""
        key = (tenant, route_class)
        if key not in self._budgets:
            rates = self._settings.rates_for(tenant)
            own: str | None = getattr(rates, route_class.value)
            name, rate = (route_class.value, own) if own is not None else ("default", rates.default)
            items = _items(rate)
            self._budgets[key] = Budget(name, items) if items is not None else None
        return self._budgets[key]

    async def check_tenant(self, tenant: str, route_class: RouteClass) -> Quota | None:
        """Draw one request from the tenant's budget; raise RateLimited (429) when it is spent."""
        budget = self.budget(tenant, route_class)
        if budget is None:
            return None
        ids = ("tenant", tenant, budget.name)
        allowed, quota = await self._draw(self._tenant, budget.items, ids, report=True)
        if not allowed:
            self._metrics.rate_limited_requests.labels("tenant", route_class.value).inc()
            raise errors.RateLimited(
                "Too many requests for this account; slow down and retry after the time in Retry-After.",
                code="rate_limited",
                headers=_refusal_headers(quota),
            )
        return quota

    async def check_payer(self, tenant: str, customer_id: str | None, ip: str | None) -> None:
        """Draw one payment creation from the customer's and the payer IP's budgets (429 when spent)."""
        checks = (
            ("customer", customer_id, self._customer, "customer_rate_limited", "this customer"),
            ("customer_ip", ip, self._customer_ip, "ip_rate_limited", "this customer IP address"),
        )
        for limiter, value, items, code, whom in checks:
            if not value or items is None:
                continue
            ids = (limiter, tenant, _safe_id(value))
            allowed, quota = await self._draw(self._payer, items, ids, report=False)
            if not allowed:
                self._metrics.rate_limited_requests.labels(limiter, RouteClass.PAYMENT_WRITE.value).inc()
                raise errors.RateLimited(
                    f"Too many payments for {whom}; retry after the time in Retry-After.",
                    code=code,
                    headers=_refusal_headers(quota),
                )

    async def _draw(
        self,
        limiters: tuple[RateLimiter, RateLimiter],
        items: tuple[RateLimitItem, ...],
        ids: tuple[str, ...],
        *,
        report: bool,
    ) -> tuple[bool, Quota | None]:
        if self._shared and time.monotonic() >= self._fallback_until:
            try:
                return await _draw_from(limiters[0], items, ids, report=report)
            except _STORAGE_ERRORS as exc:
                self._degrade(exc)
        return await _draw_from(limiters[1], items, ids, report=report)

    def _degrade(self, exc: BaseException) -> None:
        self._metrics.rate_limit_storage_errors.inc()
        entering = time.monotonic() >= self._fallback_until
        self._fallback_until = time.monotonic() + self._settings.redis_fallback
        if entering:
            log.warning(
                "ratelimit.storage_unavailable",
                error=type(exc).__name__,
                detail=str(exc)[:200],
                fallback_seconds=self._settings.redis_fallback,
                policy="fail open to per-process limits",
            )


async def _draw_from(
    limiter: RateLimiter, items: tuple[RateLimitItem, ...], ids: tuple[str, ...], *, report: bool
) -> tuple[bool, Quota | None]:
    """Hit every item (all must allow). The quota of the refusing item is always returned; on
    success (when ``report``) the quota of the item with the least left, for the headers."""
    now = time.time()
    tightest: Quota | None = None
    for item in items:
        allowed = await limiter.hit(item, *ids)
        if not allowed:
            return False, _quota(item, await limiter.get_window_stats(item, *ids), now)
        if report:
            quota = _quota(item, await limiter.get_window_stats(item, *ids), now)
            if tightest is None or quota.remaining < tightest.remaining:
                tightest = quota
    return True, tightest


def _refusal_headers(quota: Quota | None) -> dict[str, str]:
    assert quota is not None  # a refusal always carries its quota
    headers = quota.headers()
    headers["Retry-After"] = str(max(1, quota.reset_after))
    return headers
