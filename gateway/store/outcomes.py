"""The bookkeeping every applied outcome needs, in one statement (one round trip): the event
(outbox), the audit row and the stored idempotent response. Call it inside the transaction that
changes the object, so the three commit or roll back with it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.store.types import Connection

_RECORD = """
WITH event AS (
    INSERT INTO events (id, tenant, type, object_id, data) VALUES ($1, $2, $3, $4, $5::jsonb)
), audit AS (
    INSERT INTO audit_events (tenant, actor, action, outcome, source, object, details)
    VALUES ($2, $6, $7, $8, $9, $4, $10::jsonb)
    RETURNING seq
), response AS (
    UPDATE idempotency_keys
    SET response_status = $11, response_body = $12, locked_until = NULL, finished = now(),
        recovery_point = 'finished'
    WHERE $13::text IS NOT NULL AND tenant = $2 AND key = $13
)
SELECT seq FROM audit
"""


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    tenant: str
    object_id: str
    event_id: str
    event_type: str
    body: bytes  # the object's JSON: the event's data and, when keyed, the replayable response
    actor: str
    action: str
    outcome: str
    source: str | None
    details: Mapping[str, Any]
    idempotency_key: str | None
    status: int = 200


async def record_outcome(conn: Connection, record: OutcomeRecord) -> int:
    """Write event, audit row and idempotent response; return the audit sequence number."""
    seq = await conn.fetchval(
        _RECORD,
        record.event_id,
        record.tenant,
        record.event_type,
        record.object_id,
        record.body.decode(),
        record.actor,
        record.action,
        record.outcome,
        record.source,
        orjson.dumps(record.details).decode(),
        record.status,
        record.body,
        record.idempotency_key,
    )
    return int(seq)
