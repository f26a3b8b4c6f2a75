"""Risk state in PostgreSQL: velocity buckets, lists, devices, step-up challenges, lockouts.

A payment's features are read in one statement (:func:`read_features`). Its velocity keys are
counted by the statement that records the payment (:data:`COUNT_CTES`, spliced into the inserts
of gateway/store/payments.py), so a payment is counted once whatever the retries; a decline is
counted under the same keys by :func:`decline_cte` when it is applied.

Windows are bucketed: ``m1`` is the current and the previous minute bucket, ``h1`` the minute
buckets of the last hour, ``d1`` the hour buckets of the last 24 hours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from gateway.store.types import Connection, Rider
from risk.features import WINDOWS


@dataclass(frozen=True, slots=True)
class RiskKeys:
    """What one payment is counted under."""

    pairs: tuple[tuple[str, str], ...] = ()  # (kind, key), one per kind
    amount_usd_cents: int = 0
    customer_id: str | None = None
    device_id: str | None = None
    msisdn: str | None = None
    counted_here: bool = True  # False: counted in Redis instead (gateway/store/velocity_redis.py)

    def seen(self) -> tuple[list[str], list[str]]:
        """risk_seen rows for the MSISDN: per customer and per device."""
        kinds, keys = [], []
        if self.msisdn:
            for kind, key in (("customer_msisdn", self.customer_id), ("device_msisdn", self.device_id)):
                if key:
                    kinds.append(kind)
                    keys.append(key)
        return kinds, keys

    def args(self) -> tuple[object, ...]:
        """The six parameters of COUNT_CTES, in order (nothing to count when counted elsewhere)."""
        if not self.counted_here:
            return ([], [], 0, None, [], [])
        seen_kinds, seen_keys = self.seen()
        return (
            [kind for kind, _ in self.pairs],
            [key for _, key in self.pairs],
            self.amount_usd_cents,
            self.msisdn,
            seen_kinds,
            seen_keys,
        )

    def as_json(self) -> str:
        return orjson.dumps([list(pair) for pair in self.pairs]).decode()


def count_ctes(tenant: int, first: int) -> str:
    """CTEs that count a payment inserted by the ``payment`` CTE; ``$tenant`` and six parameters
    from ``$first`` (RiskKeys.args()). They run only when the payment row was inserted."""
    k, v, usd, msisdn, seen_kinds, seen_keys = (f"${first + i}" for i in range(6))
    return f"""
, counted AS (
    INSERT INTO risk_counters AS c (tenant, kind, key, grain, bucket, count, amount_usd)
    SELECT ${tenant}, k.kind, k.key, g.grain, date_trunc(g.unit, now()), 1, {usd}::bigint
    FROM payment, unnest({k}::text[], {v}::text[]) AS k(kind, key),
         (VALUES ('m', 'minute'), ('h', 'hour')) AS g(grain, unit)
    ON CONFLICT (tenant, kind, key, grain, bucket)
    DO UPDATE SET count = c.count + 1, amount_usd = c.amount_usd + excluded.amount_usd
), seen AS (
    INSERT INTO risk_seen AS s (tenant, kind, key, value)
    SELECT ${tenant}, k.kind, k.key, {msisdn}::text
    FROM payment, unnest({seen_kinds}::text[], {seen_keys}::text[]) AS k(kind, key)
    WHERE {msisdn}::text IS NOT NULL
    ON CONFLICT (tenant, kind, key, value) DO UPDATE SET last_seen = now()
)"""  # noqa: S608 - parameter numbers only


_WINDOW_FILTERS = {
    "m1": "c.grain = 'm' AND c.bucket >= date_trunc('minute', now()) - interval '1 minute'",
    "h1": "c.grain = 'm' AND c.bucket > now() - interval '1 hour'",
    "d1": "c.grain = 'h' AND c.bucket > now() - interval '24 hours'",
}
_CELLS = ",\n".join(
    f"coalesce(sum(c.{column}) FILTER (WHERE {where}), 0)::bigint AS {window}_{column}"
    for window, where in _WINDOW_FILTERS.items()
    for column in ("count", "amount_usd", "declines")
)
_SEEN_WINDOWS = {
    "m1": "interval '2 minutes'",
    "h1": "interval '1 hour'",
    "d1": "interval '24 hours'",
}
_SEEN_CELLS = ",\n".join(
    f"count(*) FILTER (WHERE s.last_seen > now() - {span}) AS {window}"
    for window, span in _SEEN_WINDOWS.items()
)

# The feature read, its seven parameters numbered from ``{first}`` (it rides in the vault's
# statement for a card payment, gateway/store/vault.py): tenant, key kinds, keys, customer, device,
# list kinds, list values.
_FEATURES = f"""
WITH velocity AS (
    SELECT k.kind, {_CELLS}
    FROM unnest(${{p2}}::text[], ${{p3}}::text[]) AS k(kind, key)
    -- Two bounded index ranges per key, whatever the table holds: the last hour of minute buckets
    -- (m1, h1) and the last day of hour buckets (d1).
    CROSS JOIN (VALUES ('m'::char(1), interval '1 hour'), ('h'::char(1), interval '24 hours'))
        AS g(grain, span)
    LEFT JOIN LATERAL (
        SELECT * FROM risk_counters c
        WHERE c.tenant = ${{p1}} AND c.kind = k.kind AND c.key = k.key AND c.grain = g.grain
          AND c.bucket > now() - g.span
        OFFSET 0  -- a fence: one index range per (key, grain), never every bucket of the key
    ) c ON true
    GROUP BY k.kind
), distinct_msisdn AS (
    SELECT s.kind, {_SEEN_CELLS}
    FROM risk_seen s
    WHERE s.tenant = ${{p1}} AND ((s.kind = 'customer_msisdn' AND s.key = ${{p4}})
                                 OR (s.kind = 'device_msisdn' AND s.key = ${{p5}}))
    GROUP BY s.kind
)
SELECT
    (SELECT coalesce(jsonb_agg(to_jsonb(velocity)), '[]') FROM velocity)::text AS risk_velocity,
    (SELECT coalesce(jsonb_agg(to_jsonb(distinct_msisdn)), '[]') FROM distinct_msisdn)::text AS risk_seen,
    (SELECT min(created) FROM payments WHERE tenant = ${{p1}} AND customer_id = ${{p4}}) AS risk_first_seen,
    -- Known: the customer has paid from it. A registered step-up key alone does not make it known.
    (${{p5}}::text IS NOT NULL AND EXISTS (
        SELECT 1 FROM payments WHERE tenant = ${{p1}} AND customer_id = ${{p4}} AND status = 'succeeded'
        AND customer ->> 'device_id' = ${{p5}})) AS risk_device_known,
    (SELECT coalesce(sum(tries), 0) FROM risk_challenges
        WHERE tenant = ${{p1}} AND customer_id = ${{p4}} AND created > now() - interval '24 hours')
        AS risk_otp_failures,
    (SELECT until FROM risk_lockouts WHERE tenant = ${{p1}} AND customer_id = ${{p4}} AND until > now())
        AS risk_locked_until,
    (SELECT coalesce(array_agg(list || ' ' || kind || ':' || value), '{{{{}}}}') FROM risk_list_entries
        WHERE (tenant IS NULL OR tenant = ${{p1}})
          AND (kind, value) IN (SELECT * FROM unnest(${{p6}}::text[], ${{p7}}::text[]))) AS risk_list_hits
"""  # noqa: S608 - fixed aggregates


def feature_select(first: int) -> str:
    """The feature read as one SELECT, its parameters numbered from ``$first``."""
    return _FEATURES.format(**{f"p{i}": first + i - 1 for i in range(1, 8)})


def feature_rider(tenant: str, keys: RiskKeys, list_keys: Sequence[tuple[str, str]]) -> Rider:
    args = (
        tenant,
        [kind for kind, _ in keys.pairs],
        [key for _, key in keys.pairs],
        keys.customer_id,
        keys.device_id,
        [kind for kind, _ in list_keys],
        [value for _, value in list_keys],
    )
    return Rider(feature_select, args)


@dataclass(frozen=True, slots=True)
class StoredFeatures:
    """What the database knows about a payment's keys (risk/features.py turns it into features)."""

    velocity: dict[str, dict[str, dict[str, float]]]  # kind → window → count | amount_usd | declines | …
    customer_first_seen: datetime | None
    device_known: bool
    otp_failures_24h: int
    locked_until: datetime | None
    list_hits: tuple[str, ...] = field(default=())  # "deny ip:198.51.100.66"


def stored_features(values: Sequence[Any]) -> StoredFeatures:
    """The feature read's columns (alone, or riding after another statement's) → StoredFeatures."""
    velocity_rows, seen_rows, first_seen, device_known, otp_failures, locked_until, hits = values
    velocity: dict[str, dict[str, dict[str, float]]] = {}
    for cells in orjson.loads(velocity_rows):
        velocity[cells["kind"]] = {
            window: {
                "count": cells[f"{window}_count"],
                "amount_usd": cells[f"{window}_amount_usd"] / 100,
                "declines": cells[f"{window}_declines"],
            }
            for window in WINDOWS
        }
    for cells in orjson.loads(seen_rows):
        kind = "customer" if cells["kind"] == "customer_msisdn" else "device"
        for window in WINDOWS:
            velocity.setdefault(kind, {}).setdefault(window, {})["distinct_msisdn"] = cells[window]
    return StoredFeatures(
        velocity=velocity,
        customer_first_seen=first_seen,
        device_known=bool(device_known),
        otp_failures_24h=int(otp_failures),
        locked_until=locked_until,
        list_hits=tuple(hits),
    )


async def read_features(conn: Connection, rider: Rider) -> StoredFeatures:
    """The feature read on its own (payments whose first statement it cannot ride)."""
    row = await conn.fetchrow(rider.select(1), *rider.args)
    assert row is not None  # a SELECT without FROM always returns its one row
    return stored_features(tuple(row))


async def risk_keys_of(conn: Connection, *, payment_id: str) -> tuple[str, RiskKeys] | None:
    """(tenant, the keys the payment was counted under), for counting its decline elsewhere."""
    row = await conn.fetchrow(
        "SELECT tenant, risk_keys::text FROM payments WHERE id = $1 AND risk_keys IS NOT NULL", payment_id
    )
    if row is None:
        return None
    pairs = tuple((kind, key) for kind, key in orjson.loads(row[1]))
    return row[0], RiskKeys(pairs=pairs, counted_here=False)


async def prune_counters(conn: Connection, *, batch: int = 1000) -> int:
    """Delete velocity buckets no window reads any more (older than a day), a batch at a time."""
    result = await conn.execute(
        """
        DELETE FROM risk_counters WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM risk_counters WHERE bucket < now() - interval '25 hours' LIMIT $1))
        """,
        batch,
    )
    return int(result.split()[-1])


def decline_cte(payment: str, when: str) -> str:
    """A CTE counting a decline under the keys its payment was counted under (once: the settlement
    statement applies the decline once); ``payment`` is the payment id's parameter, ``when`` a
    condition (gateway/store/settlement.py)."""
    return f"""declines AS (
    INSERT INTO risk_counters AS c (tenant, kind, key, grain, bucket, declines)
    SELECT p.tenant, k.pair ->> 0, k.pair ->> 1, g.grain, date_trunc(g.unit, now()), 1
    FROM payments p, jsonb_array_elements(p.risk_keys) AS k(pair),
         (VALUES ('m', 'minute'), ('h', 'hour')) AS g(grain, unit)
    WHERE {when} AND p.id = {payment} AND p.risk_keys IS NOT NULL
    ON CONFLICT (tenant, kind, key, grain, bucket) DO UPDATE SET declines = c.declines + 1
)"""  # noqa: S608 - parameter numbers and fixed conditions only


# ---- step-up challenges ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    id: str
    payment_id: str
    tenant: str
    customer_id: str | None
    kind: str
    secret: bytes
    device: str | None
    tries: int
    status: str
    expires: datetime
    public_key: bytes | None  # the device's, for a device_signature challenge
    expired: bool  # expires <= now(), by the database's clock


_CHALLENGE_COLUMNS = """
    c.id, c.payment_id, c.tenant, c.customer_id, c.kind, c.secret, c.device, c.tries, c.status,
    c.expires, d.public_key, c.expires <= now()
"""


async def insert_challenge(
    conn: Connection,
    *,
    challenge_id: str,
    payment_id: str,
    tenant: str,
    customer_id: str | None,
    kind: str,
    secret: bytes,
    device: str | None,
    ttl_seconds: float,
) -> None:
    await conn.execute(
        """
        INSERT INTO risk_challenges (id, payment_id, tenant, customer_id, kind, secret, device, expires)
        VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))
        """,
        challenge_id,
        payment_id,
        tenant,
        customer_id,
        kind,
        secret,
        device,
        ttl_seconds,
    )


async def open_challenge_for_update(conn: Connection, *, tenant: str, payment_id: str) -> Challenge | None:
    """The payment's challenge, locked until the caller's transaction ends (one answer at a time)."""
    row = await conn.fetchrow(
        f"""
        SELECT {_CHALLENGE_COLUMNS}
        FROM risk_challenges c LEFT JOIN risk_devices d ON d.id = c.device
        WHERE c.tenant = $1 AND c.payment_id = $2
        FOR UPDATE OF c
        """,  # noqa: S608 - fixed column list
        tenant,
        payment_id,
    )
    return Challenge(*row) if row is not None else None


async def answer_challenge(conn: Connection, *, challenge_id: str, status: str, wrong: bool) -> None:
    await conn.execute(
        "UPDATE risk_challenges SET status = $2, tries = tries + $3::int WHERE id = $1",
        challenge_id,
        status,
        1 if wrong else 0,
    )


async def lock_out(conn: Connection, *, tenant: str, customer_id: str, seconds: float) -> datetime:
    until: datetime = await conn.fetchval(
        """
        INSERT INTO risk_lockouts (tenant, customer_id, until)
        VALUES ($1, $2, now() + make_interval(secs => $3))
        ON CONFLICT (tenant, customer_id) DO UPDATE SET until = excluded.until
        RETURNING until
        """,
        tenant,
        customer_id,
        seconds,
    )
    return until


async def expired_challenges(conn: Connection, *, limit: int) -> list[tuple[str, str]]:
    """(tenant, payment_id) of open challenges past their expiry, oldest first."""
    rows = await conn.fetch(
        """
        SELECT tenant, payment_id FROM risk_challenges
        WHERE status = 'open' AND expires <= now() ORDER BY expires LIMIT $1
        """,
        limit,
    )
    return [(row[0], row[1]) for row in rows]


# ---- devices -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    tenant: str
    customer_id: str
    device_id: str
    public_key: bytes
    created: datetime


async def register_device(
    conn: Connection, *, device: str, tenant: str, customer_id: str, device_id: str, public_key: bytes
) -> tuple[Device, bool]:
    """Register (or find the same) key for the customer's device → (device, created)."""
    row = await conn.fetchrow(
        """
        WITH new AS (
            INSERT INTO risk_devices (id, tenant, customer_id, device_id, public_key)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (tenant, customer_id, device_id) DO NOTHING
            RETURNING id, tenant, customer_id, device_id, public_key, created
        )
        SELECT *, true FROM new
        UNION ALL
        SELECT id, tenant, customer_id, device_id, public_key, created, false FROM risk_devices
        WHERE tenant = $2 AND customer_id = $3 AND device_id = $4 AND NOT EXISTS (SELECT 1 FROM new)
        """,
        device,
        tenant,
        customer_id,
        device_id,
        public_key,
    )
    assert row is not None
    return Device(*tuple(row)[:6]), bool(row[6])


async def find_device(conn: Connection, *, tenant: str, customer_id: str, device_id: str) -> Device | None:
    row = await conn.fetchrow(
        """
        SELECT id, tenant, customer_id, device_id, public_key, created FROM risk_devices
        WHERE tenant = $1 AND customer_id = $2 AND device_id = $3
        """,
        tenant,
        customer_id,
        device_id,
    )
    return Device(*row) if row is not None else None


# ---- lists -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListEntry:
    id: str
    tenant: str | None
    list: str
    kind: str
    value: str
    note: str | None
    created_by: str
    created: datetime


_ENTRY_COLUMNS = "id, tenant, list, kind, value, note, created_by, created"


async def add_list_entry(
    conn: Connection,
    *,
    entry_id: str,
    tenant: str | None,
    list_: str,
    kind: str,
    value: str,
    note: str | None,
    created_by: str,
) -> ListEntry:
    row = await conn.fetchrow(
        f"""
        WITH new AS (
            INSERT INTO risk_list_entries (id, tenant, list, kind, value, note, created_by)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT DO NOTHING
            RETURNING {_ENTRY_COLUMNS}
        )
        SELECT * FROM new
        UNION ALL
        SELECT {_ENTRY_COLUMNS} FROM risk_list_entries
        WHERE coalesce(tenant, '') = coalesce($2, '') AND list = $3 AND kind = $4 AND value = $5
          AND NOT EXISTS (SELECT 1 FROM new)
        """,  # noqa: S608 - fixed column list
        entry_id,
        tenant,
        list_,
        kind,
        value,
        note,
        created_by,
    )
    assert row is not None
    return ListEntry(*row)


async def list_entries(conn: Connection, *, list_: str, limit: int) -> list[ListEntry]:
    rows = await conn.fetch(
        f"SELECT {_ENTRY_COLUMNS} FROM risk_list_entries WHERE list = $1 "  # noqa: S608 - fixed columns
        "ORDER BY created DESC, id DESC LIMIT $2",
        list_,
        limit,
    )
    return [ListEntry(*row) for row in rows]


async def delete_list_entry(conn: Connection, *, list_: str, entry_id: str) -> ListEntry | None:
    row = await conn.fetchrow(
        f"DELETE FROM risk_list_entries WHERE id = $1 AND list = $2 RETURNING {_ENTRY_COLUMNS}",  # noqa: S608
        entry_id,
        list_,
    )
    return ListEntry(*row) if row is not None else None
