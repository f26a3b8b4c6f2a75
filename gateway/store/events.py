"""The event log (``events``): reads for ``/v1/events``. Every query is tenant-scoped.

Events are written by the services with :func:`gateway.store.payments.insert_event`, in the same
transaction as the change they describe; ``data`` holds the object's JSON as it was then.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from gateway.store.pages import Filters, newest_first
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
    caller tells "past the end" from "no such cursor" (gateway/api/lists.py refuse_unknown_cursor),
    which it needs only for an empty page (one round trip in the common case).
    """
    where = Filters(tenant)
    where.add("type", "=", filters.type)
    where.add("object_id", "=", filters.object_id)
    return await newest_first(
        conn,
        table="events",
        columns=EVENT_COLUMNS,
        filters=where,
        limit=limit,
        starting_after=starting_after,
        ending_before=ending_before,
    )
