"""Audit events: one call writes both halves of the trail (the JSON log line and the table row)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.logs import audit as log_audit
from gateway.store.audit import append_event
from gateway.store.types import Connection


async def record(
    conn: Connection,
    *,
    actor: str,
    action: str,
    outcome: str,
    tenant: str | None = None,
    source: str | None = None,
    object_id: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> int:
    """Append the event in the caller's transaction (so it commits with the change) and log it."""
    seq = await append_event(
        conn,
        actor=actor,
        action=action,
        outcome=outcome,
        tenant=tenant,
        source=source,
        object_id=object_id,
        details=details,
    )
    log_audit(
        action,
        actor=actor,
        outcome=outcome,
        source=source,
        object_id=object_id,
        tenant=tenant,
        audit_seq=seq,
        **dict(details or {}),
    )
    return seq
