"""Reconciliation runs and the hub side they compare: posting attempts of a biller in a time window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from gateway.store.types import Connection


@dataclass(frozen=True, slots=True)
class Posting:
    attempt_id: str  # the serial the biller's file names
    payment_id: str
    amount: int
    status: str


async def postings_between(conn: Connection, *, biller: str, start: datetime, end: datetime) -> list[Posting]:
    rows = await conn.fetch(
        """
        SELECT id, payment_id, amount, status FROM payment_attempts
        WHERE operation = 'post_bill' AND connector = $1 AND created >= $2 AND created < $3
        """,
        biller,
        start,
        end,
    )
    return [Posting(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class Run:
    id: str
    connector: str
    biller: str
    day: date
    matched: int
    mismatched: int
    missing_at_hub: int
    missing_at_biller: int
    biller_count: int
    biller_total: int


async def record_run(conn: Connection, run: Run, *, items: Sequence[Mapping[str, Any]]) -> None:
    """The run and every difference it found (call inside a transaction)."""
    await conn.execute(
        """
        INSERT INTO recon_runs (id, connector, biller, day, matched, mismatched, missing_at_hub,
                                missing_at_biller, biller_count, biller_total)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        run.id,
        run.connector,
        run.biller,
        run.day,
        run.matched,
        run.mismatched,
        run.missing_at_hub,
        run.missing_at_biller,
        run.biller_count,
        run.biller_total,
    )
    if items:
        await conn.executemany(
            """
            INSERT INTO recon_items (run_id, kind, serial, payment_id, hub_amount, biller_amount,
                                     hub_status, biller_status)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            """,
            [
                (
                    run.id,
                    i["kind"],
                    i["serial"],
                    i["payment_id"],
                    i["hub_amount"],
                    i["biller_amount"],
                    i["hub_status"],
                    i["biller_status"],
                )
                for i in items
            ],
        )
