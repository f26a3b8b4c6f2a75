"""Velocity counters in Redis, used instead of PostgreSQL's when ``PAYHUB_REDIS_URL`` is set.

Same buckets and windows as gateway/store/risk.py: per key one hash with minute fields
(``m<minute>:c|a|d``: count, amount in US cents, declines) for the 1-minute and 1-hour windows and
hour fields (``h<hour>:…``) for 24 hours; distinct MSISDNs per customer and device in a sorted set
scored by time. A read is one pipeline (one Redis round trip, no database work); a count is one
Lua script, idempotent per payment (a marker key set with NX), which also drops fields past
their window so a busy key stays bounded. Redis cannot join the database transaction: a payment
is counted right after the statement that records it commits, a decline when it is applied (at
most once either way; a crash in between leaves it uncounted).
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from gateway.store.risk import RiskKeys
from risk.features import WINDOWS

DAY = 86_400
KEEP = DAY + 3600  # seconds a key outlives its last write

_COUNT = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[8]) == false then return 0 end
local n, minute, hour = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 2, n + 1 do
  local h = KEYS[i]
  if ARGV[5] == 'c' then
    redis.call('HINCRBY', h, 'm' .. minute .. ':c', 1)
    redis.call('HINCRBY', h, 'm' .. minute .. ':a', ARGV[4])
    redis.call('HINCRBY', h, 'h' .. hour .. ':c', 1)
    redis.call('HINCRBY', h, 'h' .. hour .. ':a', ARGV[4])
  else
    redis.call('HINCRBY', h, 'm' .. minute .. ':d', 1)
    redis.call('HINCRBY', h, 'h' .. hour .. ':d', 1)
  end
  for _, field in ipairs(redis.call('HKEYS', h)) do
    local grain, at = string.match(field, '^(%a)(%d+):')
    at = tonumber(at)
    if (grain == 'm' and at < minute - 61) or (grain == 'h' and at < hour - 25) then
      redis.call('HDEL', h, field)
    end
  end
  redis.call('EXPIRE', h, ARGV[8])
end
for i = n + 2, #KEYS do
  redis.call('ZADD', KEYS[i], ARGV[7], ARGV[6])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', tonumber(ARGV[7]) - 86400)
  redis.call('EXPIRE', KEYS[i], ARGV[8])
end
return 1
"""
_SPANS = {"m1": 120, "h1": 3600, "d1": DAY}  # distinct MSISDNs: seconds back per window


class RedisVelocity:
    def __init__(self, url: str, *, prefix: str, timeout: float) -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._prefix = prefix
        self._count = self._redis.register_script(_COUNT)

    async def close(self) -> None:
        await self._redis.aclose()

    def _hash(self, tenant: str, kind: str, key: str) -> str:
        return f"{self._prefix}:{tenant}:v:{kind}:{key}"

    async def read(self, tenant: str, keys: RiskKeys) -> dict[str, dict[str, dict[str, float]]]:
        """kind → window → count | amount_usd | declines | distinct_msisdn (the store's shape)."""
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        for kind, key in keys.pairs:
            pipe.hgetall(self._hash(tenant, kind, key))
        owners = self._sets(tenant, keys)
        for _, name in owners:
            for window in WINDOWS:
                pipe.zcount(name, now - _SPANS[window], "+inf")
        replies: list[Any] = await pipe.execute()
        velocity: dict[str, dict[str, dict[str, float]]] = {}
        minute, hour = int(now // 60), int(now // 3600)
        for (kind, _), fields in zip(keys.pairs, replies, strict=False):
            velocity[kind] = _windows(fields, minute, hour)
        counts = iter(replies[len(keys.pairs) :])
        for kind, _ in owners:
            owner = "customer" if kind == "customer_msisdn" else "device"
            for window in WINDOWS:
                velocity.setdefault(owner, {}).setdefault(window, {})["distinct_msisdn"] = int(next(counts))
        return velocity

    def _sets(self, tenant: str, keys: RiskKeys) -> list[tuple[str, str]]:
        """(kind, key) of the distinct-MSISDN sets of the payment's customer and device."""
        owners = (("customer_msisdn", keys.customer_id), ("device_msisdn", keys.device_id))
        return [(kind, f"{self._prefix}:{tenant}:s:{kind}:{owner}") for kind, owner in owners if owner]

    async def count(self, tenant: str, payment_id: str, keys: RiskKeys) -> bool:
        """Count a recorded payment under its keys; False when it was counted already."""
        return await self._run(tenant, f"{payment_id}:payment", keys, "c", keys.amount_usd_cents)

    async def count_decline(self, tenant: str, payment_id: str, keys: RiskKeys) -> bool:
        return await self._run(tenant, f"{payment_id}:decline", keys, "d", 0)

    async def _run(self, tenant: str, marker: str, keys: RiskKeys, what: str, amount: int) -> bool:
        now = time.time()
        hashes = [self._hash(tenant, kind, key) for kind, key in keys.pairs]
        # A count adds the payment's MSISDN to its customer's and device's sets.
        seen = [name for _, name in self._sets(tenant, keys)] if what == "c" and keys.msisdn else []
        args: list[str | int] = [
            len(hashes),
            int(now // 60),
            int(now // 3600),
            amount,
            what,
            keys.msisdn or "",
            int(now),
            KEEP,
        ]
        done = await self._count(keys=[f"{self._prefix}:{tenant}:done:{marker}", *hashes, *seen], args=args)
        return bool(done)


def _windows(fields: dict[bytes, bytes], minute: int, hour: int) -> dict[str, dict[str, float]]:
    cells: dict[str, dict[str, float]] = {
        window: {"count": 0.0, "amount_usd": 0.0, "declines": 0.0} for window in WINDOWS
    }
    names = {"c": "count", "a": "amount_usd", "d": "declines"}
    for raw, value in fields.items():
        head, _, what = raw.decode().partition(":")
        grain, at = head[0], int(head[1:])
        number = int(value) / 100 if what == "a" else int(value)
        windows = []
        if grain == "m":
            if at >= minute - 1:
                windows.append("m1")
            if at > minute - 60:
                windows.append("h1")
        elif at > hour - 24:
            windows.append("d1")
        for window in windows:
            cells[window][names[what]] += number
    return cells
