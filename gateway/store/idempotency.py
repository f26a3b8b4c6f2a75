"""Idempotency keys claimed in PostgreSQL (DESIGN §6; Brandur Leach's atomic phases).

``claim`` is one statement: it inserts the key, or takes over a key whose previous owner died
(lock expired, no response stored, same request). Whoever gets a row back owns the request until
``finish`` stores the response or ``release``/``unlock`` gives it up. Everyone else learns
whether to replay the stored response, answer 409 (still running) or 422 (key reused for a
different request).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.store.types import Connection

# How long a request owns its key. A crashed request's retry waits at most this long; a live request
# that overruns it is safe too: the retry resumes the same attempt id, the processor de-duplicates on
# it and phase 3 applies an attempt once (guarded UPDATE).
LOCK_SECONDS = 20.0


@dataclass(frozen=True, slots=True)
class Claimed:
    recovery_point: str
    object_id: str | None
    # The lock this claim took: ``release``/``abandon`` given it touch the key only while it is still
    # this owner's (not after the lock ran out and a retry took the key over).
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class InProgress:
    pass


@dataclass(frozen=True, slots=True)
class Mismatch:
    pass


ClaimResult = Claimed | Replay | InProgress | Mismatch

# A key is taken over only from an owner that died (lock expired, no response) with the same request;
# the take-over keeps the key's recovery point and object. Shared with gateway/store/intake.py.
TAKE_OVER = """
ON CONFLICT (tenant, key) DO UPDATE SET locked_until = EXCLUDED.locked_until
    WHERE k.response_status IS NULL
      AND (k.locked_until IS NULL OR k.locked_until < now())
      AND k.request_hash = EXCLUDED.request_hash
      AND k.request_method = EXCLUDED.request_method
      AND k.request_path = EXCLUDED.request_path
RETURNING k.recovery_point, k.object_id, k.locked_until"""

_CLAIM = f"""
INSERT INTO idempotency_keys AS k (tenant, key, request_method, request_path, request_hash, locked_until)
VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)){TAKE_OVER}
"""  # noqa: S608 - fixed fragments

_EXISTING = """
SELECT request_method, request_path, request_hash, response_status, response_body
FROM idempotency_keys WHERE tenant = $1 AND key = $2
"""


async def claim(
    conn: Connection, *, tenant: str, key: str, method: str, path: str, request_hash: bytes
) -> ClaimResult:
    row = await conn.fetchrow(_CLAIM, tenant, key, method, path, request_hash, LOCK_SECONDS)
    if row is not None:
        return Claimed(row["recovery_point"], row["object_id"], row["locked_until"])
    existing = await conn.fetchrow(_EXISTING, tenant, key)
    if existing is None:  # finished and pruned between the two statements: try once more
        return await claim(conn, tenant=tenant, key=key, method=method, path=path, request_hash=request_hash)
    return answer_for(existing, method=method, path=path, request_hash=request_hash)


def answer_for(existing: Any, *, method: str, path: str, request_hash: bytes) -> ClaimResult:
    """What a key someone else holds (or finished) answers this request: replay, in progress, mismatch."""
    same_request = (
        bytes(existing["request_hash"]) == request_hash
        and existing["request_method"] == method
        and existing["request_path"] == path
    )
    if not same_request:
        return Mismatch()
    if existing["response_status"] is not None:
        return Replay(existing["response_status"], bytes(existing["response_body"]))
    return InProgress()


async def set_recovery_point(conn: Connection, *, tenant: str, key: str, point: str, object_id: str) -> None:
    await conn.execute(
        "UPDATE idempotency_keys SET recovery_point = $3, object_id = $4 WHERE tenant = $1 AND key = $2",
        tenant,
        key,
        point,
        object_id,
    )


async def finish(conn: Connection, *, tenant: str, key: str, status: int, body: bytes) -> None:
    """Store the response to replay; called in the transaction that commits the outcome."""
    await conn.execute(
        """
        UPDATE idempotency_keys
        SET response_status = $3, response_body = $4, locked_until = NULL, finished = now(),
            recovery_point = 'finished'
        WHERE tenant = $1 AND key = $2
        """,
        tenant,
        key,
        status,
        body,
    )


async def release(conn: Connection, *, tenant: str, key: str, owned_until: datetime | None = None) -> None:
    """Forget a key whose request was refused before doing anything (a retry must be free to succeed)."""
    await conn.execute(
        """DELETE FROM idempotency_keys
        WHERE tenant = $1 AND key = $2 AND response_status IS NULL
          AND ($3::timestamptz IS NULL OR locked_until = $3)""",
        tenant,
        key,
        owned_until,
    )


async def abandon(conn: Connection, *, tenant: str, key: str, owned_until: datetime | None = None) -> None:
    """After an unexpected error in the hub. Nothing recorded yet (still ``started``): the key is
    forgotten, so a corrected request may use it. Otherwise an attempt may have reached a connector:
    only the lock goes, and a retry of the same request resumes from the recovery point.

    ``owned_until`` (the claim's lock) fences both this and ``release``: a late call does nothing to a
    key whose lock ran out and that a retry took over."""
    await conn.execute(
        """
        WITH forgotten AS (
            DELETE FROM idempotency_keys
            WHERE tenant = $1 AND key = $2 AND response_status IS NULL AND recovery_point = 'started'
              AND ($3::timestamptz IS NULL OR locked_until = $3)
        )
        UPDATE idempotency_keys SET locked_until = NULL
        WHERE tenant = $1 AND key = $2 AND response_status IS NULL AND recovery_point <> 'started'
          AND ($3::timestamptz IS NULL OR locked_until = $3)
        """,
        tenant,
        key,
        owned_until,
    )


async def prune(conn: Connection, *, older_than_hours: float, batch: int = 1000) -> int:
    """Delete keys past retention (≥ 24 h by contract), a batch at a time.

    Abandoned keys (a request that crashed and was never retried) go too: by then the resolver
    has long settled their payment, and a retry that late would be a new request anyway.
    """
    result = await conn.execute(
        """
        DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_keys
            WHERE created < now() - make_interval(secs => $1)
              AND (response_status IS NOT NULL OR locked_until IS NULL OR locked_until < now())
            LIMIT $2))
        """,
        older_than_hours * 3600,
        batch,
    )
    return int(result.split()[-1])
