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

Per request, a check is only the library's storage work (a hit, and the window's state for the
RateLimit-* headers): limit strings are parsed once per budget, storage keys are built once per
identifiers (``_with_remembered_keys``), refusal counters are bound at start-up, and the memory storage
is called without the library's pass-through error wrapper.

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
from typing import Any, cast

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


def _unwrapped(method: Any) -> Any:
    while (inner := getattr(method, "__wrapped__", None)) is not None:
        method = inner
    return method


# limits wraps a storage's methods (incr, get, ...) in an error translator (Storage.__init_subclass__, for
# every subclass, so this one's were wrapped twice): a coroutine frame and a try block around every storage
# call, five to six per tenant check. It only turns the storage's base_exceptions into StorageError when
# wrap_exceptions is set, which this storage never is (it is made with the default, False, and in-process
# counters raise no storage errors): SweptMemoryStorage calls MemoryStorage's own methods directly.
for _name, _method in list(vars(SweptMemoryStorage).items()):
    if hasattr(_method, "__wrapped__"):
        setattr(SweptMemoryStorage, _name, _unwrapped(_method))


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
    ids: tuple[str, ...]  # the identifiers of the tenant's counters: ("tenant", tenant, name)


# Each check asks an item for its storage key (limits' RateLimitItem.key_for: a str() and a join over the
# identifiers and the limit, twice per tenant check). The items here remember the keys they made: a tenant
# budget's few keys for good, customer and IP keys (unbounded in number) up to _MAX_KEYS per item.
_MAX_KEYS = 4096


def _remembered_key_for(self: Any, *identifiers: str) -> str:
    keys: dict[tuple[str, ...], str] = self._keys
    key = keys.get(identifiers)
    if key is None:
        if len(keys) >= _MAX_KEYS:
            keys.clear()
        key = keys[identifiers] = RateLimitItem.key_for(self, *identifiers)
    return key


_KEYED: dict[type[RateLimitItem], type[RateLimitItem]] = {}


def _with_remembered_keys(item: RateLimitItem) -> RateLimitItem:
    """The same limit (equal, same storage keys), as an item that builds each key once."""
    cls = type(item)
    keyed = _KEYED.get(cls)
    if keyed is None:
        # No GRANULARITY in the class dict: limits' metaclass does not register it as a granularity.
        namespace = {"__slots__": ("_keys",), "key_for": _remembered_key_for}
        metaclass: Any = type(cls)
        keyed = _KEYED[cls] = metaclass(f"Keyed{cls.__name__}", (cls,), namespace)
    copy: Any = keyed(item.amount, item.multiples, item.namespace)
    copy._keys = {}
    return cast(RateLimitItem, copy)


def _items(rate: str) -> tuple[RateLimitItem, ...] | None:
    """A limit string parsed once (at start-up or on a tenant's first request), never per request."""
    return None if rate == UNLIMITED else tuple(_with_remembered_keys(item) for item in parse_many(rate))


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
        # route class → tenant → budget (None: unlimited), resolved on the tenant's first request
        self._budgets: dict[RouteClass, dict[str, Budget | None]] = {rc: {} for rc in RouteClass}
        self._customer = _items(settings.per_customer)
        self._customer_ip = _items(settings.per_customer_ip)
        # Refusal counters, bound once: payhub_rate_limited_requests_total{limiter, route_class}.
        limited = metrics.rate_limited_requests
        self._tenant_refusals = {rc: limited.labels("tenant", rc.value) for rc in RouteClass}
        payments = RouteClass.PAYMENT_WRITE.value
        self._payer_checks = (
            (
                "customer",
                self._customer,
                "customer_rate_limited",
                "this customer",
                limited.labels("customer", payments),
            ),
            (
                "customer_ip",
                self._customer_ip,
                "ip_rate_limited",
                "this customer IP address",
                limited.labels("customer_ip", payments),
            ),
        )
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
        budgets = self._budgets[route_class]
        try:
            return budgets[tenant]
        except KeyError:
            pass
        rates = self._settings.rates_for(tenant)
        own: str | None = getattr(rates, route_class.value)
        name, rate = (route_class.value, own) if own is not None else ("default", rates.default)
        items = _items(rate)
        budget = budgets[tenant] = (
            Budget(name, items, ("tenant", tenant, name)) if items is not None else None
        )
        return budget

    async def check_tenant(self, tenant: str, route_class: RouteClass) -> Quota | None:
        """Draw one request from the tenant's budget; raise RateLimited (429) when it is spent."""
        budget = self.budget(tenant, route_class)
        if budget is None:
            return None
        allowed, quota = await self._draw(self._tenant, budget.items, budget.ids, report=True)
        if not allowed:
            self._tenant_refusals[route_class].inc()
            raise errors.RateLimited(
                "Too many requests for this account; slow down and retry after the time in Retry-After.",
                code="rate_limited",
                headers=_refusal_headers(quota),
            )
        return quota

    async def check_payer(self, tenant: str, customer_id: str | None, ip: str | None) -> None:
        """Draw one payment creation from the customer's and the payer IP's budgets (429 when spent)."""
        for value, (limiter, items, code, whom, refused) in zip(
            (customer_id, ip), self._payer_checks, strict=True
        ):
            if not value or items is None:
                continue
            ids = (limiter, tenant, _safe_id(value))
            allowed, quota = await self._draw(self._payer, items, ids, report=False)
            if not allowed:
                refused.inc()
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
    tightest: Quota | None = None
    for item in items:
        allowed = await limiter.hit(item, *ids)
        if not allowed:
            return False, _quota(item, await limiter.get_window_stats(item, *ids), time.time())
        if report:
            quota = _quota(item, await limiter.get_window_stats(item, *ids), time.time())
            if tightest is None or quota.remaining < tightest.remaining:
                tightest = quota
    return True, tightest


def _refusal_headers(quota: Quota | None) -> dict[str, str]:
    assert quota is not None  # a refusal always carries its quota
    headers = quota.headers()
    headers["Retry-After"] = str(max(1, quota.reset_after))
    return headers
