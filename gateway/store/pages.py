"""Keyset pagination on (created, id), newest first — the one list query behind every list route.

Stable while new rows arrive: a page is defined by its cursor's position, never by an offset.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from gateway.store.types import Connection


class Filters:
    """WHERE conditions built with numbered placeholders; $1 is always the tenant."""

    def __init__(self, tenant: str) -> None:
        self.conditions = ["tenant = $1"]
        self.args: list[Any] = [tenant]

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, column: str, op: str, value: Any) -> None:
        """``column op value`` when value is not None (column and op are code, never input)."""
        if value is not None:
            self.conditions.append(f"{column} {op} {self.arg(value)}")


async def newest_first(
    conn: Connection,
    *,
    table: str,
    columns: str,
    filters: Filters,
    limit: int,
    starting_after: str | None,
    ending_before: str | None,
) -> tuple[list[asyncpg.Record], bool]:
    """One page and whether there is more beyond it, in newest-first order either way."""
    cursor = ending_before or starting_after
    if cursor is not None:
        # The cursor's own position is read in the same statement: no extra round trip.
        position = f"(SELECT created, id FROM {table} WHERE id = {filters.arg(cursor)} AND tenant = $1)"  # noqa: S608
        comparison = ">" if ending_before else "<"
        filters.conditions.append(f"(created, id) {comparison} {position}")
    order = "ASC" if ending_before else "DESC"
    where = " AND ".join(filters.conditions)
    sql = (
        f"SELECT {columns} FROM {table} WHERE {where} "  # noqa: S608 - table/columns are code; values are placeholders
        f"ORDER BY created {order}, id {order} LIMIT {filters.arg(limit + 1)}"
    )
    rows = list(await conn.fetch(sql, *filters.args))
    has_more = len(rows) > limit
    rows = rows[:limit]
    if ending_before:
        rows.reverse()
    return rows, has_more


async def tenant_has(conn: Connection, *, table: str, tenant: str, object_id: str) -> bool:
    """Whether ``object_id`` is one of the tenant's rows in ``table`` (code, never input): a list tells
    "past the end" from "no such cursor" with it, and needs it only for an empty page."""
    return bool(
        await conn.fetchval(f"SELECT 1 FROM {table} WHERE id = $1 AND tenant = $2", object_id, tenant)  # noqa: S608
    )
