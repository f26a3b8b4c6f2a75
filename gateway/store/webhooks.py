"""Webhook endpoints and the delivery outbox (``webhook_endpoints``, ``webhook_deliveries``).

Delivery rows are created by the ``events_webhook_fanout`` trigger (migration 0010) in the
transaction that writes the event, one per enabled endpoint of the tenant that subscribes to the
event's type. Workers take due rows with :func:`claim_due` (one statement: lease + attempt count,
``FOR UPDATE SKIP LOCKED``), and report each attempt with :func:`record_delivered` or
:func:`record_failed`, both guarded by the attempt number so a late answer to a lease that expired
(another worker made the next attempt) changes nothing. Every API query is tenant-scoped.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from crypto.webhook_secrets import SealedSecret
from gateway.store.pages import Filters, newest_first
from gateway.store.types import Connection

_ENDPOINT_COLUMNS = (
    "id, tenant, url, enabled_events, description, status, secret_kid, secret_nonce, secret_sealed, "
    "previous_kid, previous_nonce, previous_sealed, previous_expires, retry_window, created"
)
_DELIVERY_COLUMNS = (
    "id, event_id, endpoint_id, status, attempts, next_attempt, deadline, last_status, last_error, "
    "delivered_at, created"
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    tenant: str
    url: str
    enabled_events: list[str]
    description: str | None
    status: str
    secret: SealedSecret
    previous: SealedSecret | None
    previous_expires: dt.datetime | None
    retry_window: dt.timedelta
    created: dt.datetime


@dataclass(frozen=True, slots=True)
class Delivery:
    id: uuid.UUID
    event_id: str
    endpoint_id: str
    status: str
    attempts: int
    next_attempt: dt.datetime
    deadline: dt.datetime
    last_status: int | None
    last_error: str | None
    delivered_at: dt.datetime | None
    created: dt.datetime


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """One attempt a worker now holds the lease for, with what it needs to send it."""

    id: uuid.UUID
    attempt: int  # this attempt's number (1 for the first)
    tenant: str
    endpoint_id: str
    url: str
    secret: SealedSecret
    previous: SealedSecret | None  # still within its rotation overlap
    event_id: str
    event_type: str
    event_data: str  # the object's JSON as stored with the event
    event_created: dt.datetime


def _sealed(kid: int | None, nonce: bytes | None, ciphertext: bytes | None) -> SealedSecret | None:
    if kid is None or nonce is None or ciphertext is None:
        return None
    return SealedSecret(kid, bytes(nonce), bytes(ciphertext))


def _endpoint(row: asyncpg.Record) -> Endpoint:
    secret = _sealed(row["secret_kid"], row["secret_nonce"], row["secret_sealed"])
    assert secret is not None  # NOT NULL columns
    return Endpoint(
        id=row["id"],
        tenant=row["tenant"],
        url=row["url"],
        enabled_events=list(row["enabled_events"]),
        description=row["description"],
        status=row["status"],
        secret=secret,
        previous=_sealed(row["previous_kid"], row["previous_nonce"], row["previous_sealed"]),
        previous_expires=row["previous_expires"],
        retry_window=row["retry_window"],
        created=row["created"],
    )


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(
        id=row["id"],
        event_id=row["event_id"],
        endpoint_id=row["endpoint_id"],
        status=row["status"],
        attempts=row["attempts"],
        next_attempt=row["next_attempt"],
        deadline=row["deadline"],
        last_status=row["last_status"],
        last_error=row["last_error"],
        delivered_at=row["delivered_at"],
        created=row["created"],
    )


# ---- endpoints (the API) ---------------------------------------------------------------------------


async def insert_endpoint(
    conn: Connection,
    *,
    endpoint_id: str,
    tenant: str,
    url: str,
    enabled_events: Sequence[str],
    description: str | None,
    secret: SealedSecret,
    retry_window: float,
) -> Endpoint:
    row = await conn.fetchrow(
        f"""
        INSERT INTO webhook_endpoints
            (id, tenant, url, enabled_events, description, secret_kid, secret_nonce, secret_sealed,
             retry_window)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, make_interval(secs => $9))
        RETURNING {_ENDPOINT_COLUMNS}
        """,  # noqa: S608 - fixed columns
        endpoint_id,
        tenant,
        url,
        list(enabled_events),
        description,
        secret.kid,
        secret.nonce,
        secret.ciphertext,
        retry_window,
    )
    assert row is not None
    return _endpoint(row)


async def get_endpoint(conn: Connection, *, tenant: str, endpoint_id: str) -> Endpoint | None:
    row = await conn.fetchrow(
        f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints "  # noqa: S608 - fixed columns
        "WHERE id = $1 AND tenant = $2 AND status = 'enabled'",
        endpoint_id,
        tenant,
    )
    return None if row is None else _endpoint(row)


async def list_endpoints(
    conn: Connection, *, tenant: str, limit: int, starting_after: str | None, ending_before: str | None
) -> tuple[list[Endpoint], bool]:
    """Enabled endpoints, newest first; a cursor that is not one of them gives an empty page."""
    where = Filters(tenant)
    where.add("status", "=", "enabled")
    rows, has_more = await newest_first(
        conn,
        table="webhook_endpoints",
        columns=_ENDPOINT_COLUMNS,
        filters=where,
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
    )
    return [_endpoint(row) for row in rows], has_more


async def endpoint_exists(conn: Connection, *, tenant: str, endpoint_id: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT 1 FROM webhook_endpoints WHERE id = $1 AND tenant = $2 AND status = 'enabled'",
            endpoint_id,
            tenant,
        )
    )


async def delete_endpoint(conn: Connection, *, tenant: str, endpoint_id: str) -> bool:
    """Mark the endpoint deleted and cancel its pending deliveries, in one statement; False if unknown.

    A POST already in flight finishes, but its answer is recorded against a canceled row (nothing
    changes) and no further attempt is made.
    """
    deleted = await conn.fetchval(
        """
        WITH endpoint AS (
            UPDATE webhook_endpoints SET status = 'deleted'
            WHERE id = $1 AND tenant = $2 AND status = 'enabled'
            RETURNING id
        ), canceled AS (
            UPDATE webhook_deliveries SET status = 'canceled', locked_until = NULL
            WHERE endpoint_id = (SELECT id FROM endpoint) AND status = 'pending'
        )
        SELECT count(*) FROM endpoint
        """,
        endpoint_id,
        tenant,
    )
    return bool(deleted)


async def rotate_secret(
    conn: Connection, *, tenant: str, endpoint_id: str, secret: SealedSecret, overlap: float
) -> Endpoint | None:
    """Install ``secret``; the current one signs too for ``overlap`` seconds (0: not at all)."""
    row = await conn.fetchrow(
        f"""
        UPDATE webhook_endpoints SET
            previous_kid = CASE WHEN $6 > 0 THEN secret_kid END,
            previous_nonce = CASE WHEN $6 > 0 THEN secret_nonce END,
            previous_sealed = CASE WHEN $6 > 0 THEN secret_sealed END,
            previous_expires = CASE WHEN $6 > 0 THEN now() + make_interval(secs => $6) END,
            secret_kid = $3, secret_nonce = $4, secret_sealed = $5
        WHERE id = $1 AND tenant = $2 AND status = 'enabled'
        RETURNING {_ENDPOINT_COLUMNS}
        """,  # noqa: S608 - fixed columns
        endpoint_id,
        tenant,
        secret.kid,
        secret.nonce,
        secret.ciphertext,
        overlap,
    )
    return None if row is None else _endpoint(row)


async def redeliver(
    conn: Connection, *, tenant: str, event_id: str, endpoint_id: str | None
) -> list[Delivery]:
    """Put the event's deliveries (to enabled endpoints; only ``endpoint_id``'s when given) back to
    pending, due now, with a fresh retry window; the attempt count goes on (attempt numbers stay unique)."""
    rows = await conn.fetch(
        f"""
        UPDATE webhook_deliveries d SET
            status = 'pending', next_attempt = now(), locked_until = NULL,
            deadline = now() + w.retry_window, delivered_at = NULL
        FROM webhook_endpoints w
        WHERE d.event_id = $1 AND d.tenant = $2 AND ($3::text IS NULL OR d.endpoint_id = $3)
          AND w.id = d.endpoint_id AND w.status = 'enabled'
        RETURNING {", ".join("d." + c for c in _DELIVERY_COLUMNS.split(", "))}
        """,  # noqa: S608 - fixed columns
        event_id,
        tenant,
        endpoint_id,
    )
    return sorted((_delivery(row) for row in rows), key=lambda d: (d.created, d.endpoint_id))


async def deliveries_of(conn: Connection, *, tenant: str, event_id: str) -> list[Delivery]:
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM webhook_deliveries "  # noqa: S608 - fixed columns
        "WHERE event_id = $1 AND tenant = $2 ORDER BY created, endpoint_id",
        event_id,
        tenant,
    )
    return [_delivery(row) for row in rows]


# ---- the delivery worker -------------------------------------------------------------------------

# Fair claims: each enabled endpoint (in random order) offers at most $3 of its due deliveries,
# oldest due first, so a dead endpoint's backlog of retries cannot starve the healthy endpoints
# behind it (head-of-line blocking); within an endpoint, deliveries go out in the order they fell
# due. Rows another claimer holds are skipped, not waited for.
_CLAIM = """
WITH picked AS (
    SELECT d.id
    FROM (SELECT id FROM webhook_endpoints WHERE status = 'enabled' ORDER BY random()) w
    CROSS JOIN LATERAL (
        SELECT id FROM webhook_deliveries
        WHERE endpoint_id = w.id AND status = 'pending' AND next_attempt <= now()
          AND (locked_until IS NULL OR locked_until < now())
        ORDER BY next_attempt, created
        LIMIT $3
        FOR UPDATE SKIP LOCKED
    ) d
    LIMIT $2
), claimed AS (
    UPDATE webhook_deliveries SET locked_until = now() + make_interval(secs => $1), attempts = attempts + 1
    WHERE id IN (SELECT id FROM picked)
    RETURNING id, event_id, endpoint_id, attempts, next_attempt, created
)
SELECT c.id, c.attempts, c.endpoint_id, w.tenant, w.url,
       w.secret_kid, w.secret_nonce, w.secret_sealed,
       CASE WHEN w.previous_expires > now() THEN w.previous_kid END AS previous_kid,
       CASE WHEN w.previous_expires > now() THEN w.previous_nonce END AS previous_nonce,
       CASE WHEN w.previous_expires > now() THEN w.previous_sealed END AS previous_sealed,
       e.id AS event_id, e.type AS event_type, e.data::text AS event_data, e.created AS event_created
FROM claimed c
JOIN webhook_endpoints w ON w.id = c.endpoint_id
JOIN events e ON e.id = c.event_id
ORDER BY c.next_attempt, c.created
"""


async def claim_due(
    conn: Connection, *, lease: float, limit: int, per_endpoint: int
) -> list[ClaimedDelivery]:
    """Lease up to ``limit`` due deliveries (at most ``per_endpoint`` of one endpoint), counting the
    attempt; safe to run from any number of processes at once."""
    rows = await conn.fetch(_CLAIM, lease, limit, per_endpoint)
    claimed: list[ClaimedDelivery] = []
    for row in rows:
        secret = _sealed(row["secret_kid"], row["secret_nonce"], row["secret_sealed"])
        assert secret is not None
        claimed.append(
            ClaimedDelivery(
                id=row["id"],
                attempt=row["attempts"],
                tenant=row["tenant"],
                endpoint_id=row["endpoint_id"],
                url=row["url"],
                secret=secret,
                previous=_sealed(row["previous_kid"], row["previous_nonce"], row["previous_sealed"]),
                event_id=row["event_id"],
                event_type=row["event_type"],
                event_data=row["event_data"],
                event_created=row["event_created"],
            )
        )
    return claimed


async def record_delivered(conn: Connection, *, delivery_id: uuid.UUID, attempt: int, status: int) -> bool:
    """The receiver answered 2xx; False when the row moved on meanwhile (redelivered, canceled)."""
    result: Any = await conn.fetchval(
        """
        UPDATE webhook_deliveries SET status = 'delivered', delivered_at = now(), locked_until = NULL,
            last_status = $3, last_error = NULL
        WHERE id = $1 AND attempts = $2 AND status = 'pending'
        RETURNING 1
        """,
        delivery_id,
        attempt,
        status,
    )
    return result is not None


async def record_failed(
    conn: Connection,
    *,
    delivery_id: uuid.UUID,
    attempt: int,
    backoff: float,
    status: int | None,
    error: str,
) -> str | None:
    """The attempt failed: retry after ``backoff`` seconds (never later than the deadline, so the
    last attempt is made at the deadline), or dead when the deadline has passed. Returns the new
    status ('pending' or 'dead'), None when the row moved on meanwhile."""
    result: Any = await conn.fetchval(
        """
        UPDATE webhook_deliveries SET
            status = CASE WHEN now() >= deadline THEN 'dead' ELSE 'pending' END,
            next_attempt = least(now() + make_interval(secs => $3), deadline),
            locked_until = NULL, last_status = $4, last_error = $5
        WHERE id = $1 AND attempts = $2 AND status = 'pending'
        RETURNING status
        """,
        delivery_id,
        attempt,
        backoff,
        status,
        error,
    )
    return None if result is None else str(result)


async def outbox_lag(conn: Connection) -> float:
    """Seconds the oldest due, pending delivery has been waiting (0 when none is due)."""
    lag: Any = await conn.fetchval(
        """
        SELECT coalesce(extract(epoch FROM now() - min(next_attempt)), 0)::float8
        FROM webhook_deliveries WHERE status = 'pending' AND next_attempt <= now()
        """
    )
    return float(lag)


async def dead_count(conn: Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'dead'"))
