"""Reconciliation: one biller's settlement file for a day against the hub's postings.

Each line of the file is matched to the hub's posting attempt with the same serial (our
reference). Classes, as bill-payment networks name them: matched; amount or status mismatch;
present only at the biller (missing at the hub); posted at the hub but absent from the file
(missing at the biller). Every run and every difference is recorded for follow-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from connectors.base import BillerConnector, SettlementLine
from gateway.ids import new_id
from gateway.store.types import Connection

# A posting counts as done at the biller when the hub saw it succeed or still waits for it.
_HUB_SUCCESS = "succeeded"
_BILLER_SUCCESS = frozenset({"success", "succeeded", "paid", "posted", "completed"})


@dataclass
class ReconResult:
    biller: str
    day: date
    matched: int = 0
    mismatched: int = 0
    missing_at_hub: int = 0
    missing_at_biller: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.day} {self.biller}: matched {self.matched}, mismatched {self.mismatched}, "
            f"missing at hub {self.missing_at_hub}, missing at biller {self.missing_at_biller}"
        )


def classify(lines: list[SettlementLine], hub: Mapping[str, Any], biller: str, day: date) -> ReconResult:
    """Pure matching of file lines against hub postings keyed by serial."""
    result = ReconResult(biller, day)
    seen: set[str] = set()
    for line in lines:
        posting = hub.get(line.serial)
        seen.add(line.serial)
        biller_ok = line.status.lower() in _BILLER_SUCCESS
        if posting is None:
            result.missing_at_hub += 1
            result.items.append(
                {
                    "kind": "missing_at_hub",
                    "serial": line.serial,
                    "payment_id": None,
                    "hub_amount": None,
                    "biller_amount": line.amount,
                    "hub_status": None,
                    "biller_status": line.status,
                }
            )
            continue
        item = {
            "serial": line.serial,
            "payment_id": posting["payment_id"],
            "hub_amount": posting["amount"],
            "biller_amount": line.amount,
            "hub_status": posting["status"],
            "biller_status": line.status,
        }
        if posting["amount"] != line.amount:
            result.mismatched += 1
            result.items.append({"kind": "amount_mismatch", **item})
        elif (posting["status"] == _HUB_SUCCESS) != biller_ok:
            result.mismatched += 1
            result.items.append({"kind": "status_mismatch", **item})
        else:
            result.matched += 1
    for serial, posting in hub.items():
        if serial not in seen and posting["status"] == _HUB_SUCCESS:
            result.missing_at_biller += 1
            result.items.append(
                {
                    "kind": "missing_at_biller",
                    "serial": serial,
                    "payment_id": posting["payment_id"],
                    "hub_amount": posting["amount"],
                    "biller_amount": None,
                    "hub_status": posting["status"],
                    "biller_status": None,
                }
            )
    return result


async def hub_postings(conn: Connection, biller: str, day: date, timezone: str = "UTC") -> dict[str, Any]:
    """The hub's posting attempts for ``biller`` made on the biller's business ``day``, keyed by serial.

    The day is the biller's (its ``timezone``): a Shanghai biller's 1 December starts at 16:00 UTC on
    30 November, and its file lists exactly the postings of that local day.
    """
    start = datetime.combine(day, time.min, tzinfo=ZoneInfo(timezone)).astimezone(UTC)
    rows = await conn.fetch(
        """
        SELECT a.id, a.payment_id, a.amount, a.status
        FROM payment_attempts a
        WHERE a.operation = 'post_bill' AND a.connector = $1 AND a.created >= $2 AND a.created < $3
        """,
        biller,
        start,
        start + timedelta(days=1),
    )
    return {
        row["id"]: {"payment_id": row["payment_id"], "amount": row["amount"], "status": row["status"]}
        for row in rows
    }


async def reconcile(
    pool: asyncpg.Pool, connector: BillerConnector, biller: str, day: date, *, timezone: str = "UTC"
) -> ReconResult:
    lines = await connector.settlement_report(biller, day)
    async with pool.acquire() as conn:
        hub = await hub_postings(conn, biller, day, timezone)
        result = classify(lines, hub, biller, day)
        run_id = new_id("recon")
        async with conn.transaction():
            await conn.execute(
                """
                INSERT INTO recon_runs (id, connector, biller, day, matched, mismatched, missing_at_hub,
                                        missing_at_biller, biller_count, biller_total)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                """,
                run_id,
                connector.name,
                biller,
                day,
                result.matched,
                result.mismatched,
                result.missing_at_hub,
                result.missing_at_biller,
                len(lines),
                sum(line.amount for line in lines),
            )
            if result.items:
                await conn.executemany(
                    """
                    INSERT INTO recon_items (run_id, kind, serial, payment_id, hub_amount, biller_amount,
                                             hub_status, biller_status)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    """,
                    [
                        (
                            run_id,
                            i["kind"],
                            i["serial"],
                            i["payment_id"],
                            i["hub_amount"],
                            i["biller_amount"],
                            i["hub_status"],
                            i["biller_status"],
                        )
                        for i in result.items
                    ],
                )
    return result
