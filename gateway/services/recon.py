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
from gateway.store import recon as store
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
    postings = await store.postings_between(conn, biller=biller, start=start, end=start + timedelta(days=1))
    return {
        p.attempt_id: {"payment_id": p.payment_id, "amount": p.amount, "status": p.status} for p in postings
    }


async def reconcile(
    pool: asyncpg.Pool, connector: BillerConnector, biller: str, day: date, *, timezone: str = "UTC"
) -> ReconResult:
    lines = await connector.settlement_report(biller, day)
    async with pool.acquire() as conn:
        hub = await hub_postings(conn, biller, day, timezone)
        result = classify(lines, hub, biller, day)
        async with conn.transaction():
            await store.record_run(
                conn,
                store.Run(
                    id=new_id("recon"),
                    connector=connector.name,
                    biller=biller,
                    day=day,
                    matched=result.matched,
                    mismatched=result.mismatched,
                    missing_at_hub=result.missing_at_hub,
                    missing_at_biller=result.missing_at_biller,
                    biller_count=len(lines),
                    biller_total=sum(line.amount for line in lines),
                ),
                items=result.items,
            )
    return result
