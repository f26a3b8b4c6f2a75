"""The event log (``events``): reads for ``/v1/events``. Every query is tenant-scoped.

Events are written by the services with :func:`gateway.store.payments.insert_event`, in the same
transaction as the change they describe; ``data`` holds the object's JSON as it was then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.store.types import Connection

EVENT_COLUMNS = "id, tenant, type, object_id, data::text, created"


@dataclass(frozen=True, slots=True)
class EventFilters:
    type: str | None = None
    object_id: str | None = None


async def get_event(conn: Connection, *, tenant: str, event_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE id = $1 AND tenant = $2",  # noqa: S608 - fixed columns
        event_id,
        tenant,
    )


async def event_exists(conn: Connection, *, tenant: str, event_id: str) -> bool:
    return bool(await conn.fetchval("SELECT 1 FROM events WHERE id = $1 AND tenant = $2", event_id, tenant))


async def list_events(
    conn: Connection,
    *,
    tenant: str,
    filters: EventFilters,
    limit: int,
    starting_after: str | None,
    ending_before: str | None,
) -> tuple[list[asyncpg.Record], bool]:
    """Newest first, keyset-paginated on (created, id); returns (page, has_more).

    A cursor that is not the caller's event matches no row, so the page comes back empty; the
    caller tells "past the end" from "no such cursor" with :func:`event_exists`, which it needs
    only for an empty page (one round trip in the common case).
    """
    conditions = ["tenant = $1"]
    args: list[Any] = [tenant]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if filters.type is not None:
        conditions.append(f"type = {arg(filters.type)}")
    if filters.object_id is not None:
        conditions.append(f"object_id = {arg(filters.object_id)}")
    cursor = ending_before or starting_after
    if cursor is not None:
        # The cursor's own position is read in the same statement: no extra round trip.
        position = f"(SELECT created, id FROM events WHERE id = {arg(cursor)} AND tenant = $1)"  # noqa: S608
        comparison = ">" if ending_before else "<"
        conditions.append(f"(created, id) {comparison} {position}")
    order = "ASC" if ending_before else "DESC"
    where = " AND ".join(conditions)
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} "  # noqa: S608 - only placeholders interpolated
        f"ORDER BY created {order}, id {order} LIMIT {arg(limit + 1)}"
    )
    rows = list(await conn.fetch(sql, *args))
    has_more = len(rows) > limit
    rows = rows[:limit]
    if ending_before:
        rows.reverse()
    return rows, has_more
