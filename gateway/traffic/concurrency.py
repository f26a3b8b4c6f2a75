"""Concurrent-request limit per tenant (Stripe's second limiter).

A rate limit bounds how often a tenant may call; it does not stop a tenant whose requests are
slow (a stalled upload, an expensive query) from holding a large share of the process. This
counts a tenant's requests in progress and refuses the next one with 429
``too_many_concurrent_requests`` once ``max_concurrent`` are in flight. Counts are per process:
with N gateway processes a tenant may have up to N x max_concurrent in flight fleet-wide, which is
what protects each process. Plain ints on one event loop: no locks needed.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway import errors


class ConcurrencyLimiter:
    def __init__(self, max_for: Callable[[str], int]) -> None:
        self._max_for = max_for
        self._limits: dict[str, int] = {}
        self._in_flight: dict[str, int] = {}

    def in_flight(self, tenant: str) -> int:
        return self._in_flight.get(tenant, 0)

    def acquire(self, tenant: str) -> None:
        """Take a slot or raise RateLimited; every successful acquire must be paired with release."""
        limit = self._limits.get(tenant)
        if limit is None:
            limit = self._limits[tenant] = self._max_for(tenant)
        current = self._in_flight.get(tenant, 0)
        if current >= limit:
            raise errors.RateLimited(
                f"Too many concurrent requests for this account (limit {limit}); retry shortly.",
                code="too_many_concurrent_requests",
                headers={"Retry-After": "1"},
            )
        self._in_flight[tenant] = current + 1

    def release(self, tenant: str) -> None:
        remaining = self._in_flight[tenant] - 1
        if remaining:
            self._in_flight[tenant] = remaining
        else:
            del self._in_flight[tenant]
