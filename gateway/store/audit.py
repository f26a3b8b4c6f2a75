"""Audit trail queries: append an event, seal a batch into the chain, verify the chain."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from crypto.audit_chain import GENESIS_HASH, AuditRecord, SealKey, checkpoint_message, link
from gateway.store.types import Connection

# One sealer at a time across all gateway processes ("payhub" + 2).
SEAL_LOCK_ID = 0x7061796875620002

_INSERT_EVENT = """
INSERT INTO audit_events (tenant, actor, action, outcome, source, object, details)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
RETURNING seq
"""


async def append_event(
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
    """Insert one event (no lock, no chain work: the sealer links it later). Returns its seq."""
    seq = await conn.fetchval(
        _INSERT_EVENT,
        tenant,
        actor,
        action,
        outcome,
        source,
        object_id,
        orjson.dumps(details or {}).decode(),
    )
    return int(seq)


def _record(row: Mapping[str, Any]) -> AuditRecord:
    return AuditRecord(
        seq=row["seq"],
        at=row["at"],
        tenant=row["tenant"],
        actor=row["actor"],
        action=row["action"],
        outcome=row["outcome"],
        source=row["source"],
        object=row["object"],
        details=orjson.loads(row["details"]),
    )


@dataclass(frozen=True)
class SealResult:
    sealed: int
    position: int
    full_batch: bool


async def seal_batch(conn: Connection, key: SealKey, *, limit: int = 1000) -> SealResult:
    """Link up to ``limit`` unsealed, committed events into the chain and sign a checkpoint.

    Why the watermark works: ``pg_snapshot_xmin`` is taken *before* the events are read, so
    every transaction with an xid below it had finished and its events are visible to the
    read. Events at or above it may still be in flight; they are looked at again next time.
    """
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SEAL_LOCK_ID):
            return SealResult(0, 0, full_batch=False)  # another process is sealing right now
        xmin = await conn.fetchval("SELECT pg_snapshot_xmin(pg_current_snapshot())")
        tip = await conn.fetchrow(
            """
            SELECT c.position, c.hash,
                   (SELECT watermark FROM audit_checkpoints ORDER BY position DESC LIMIT 1) AS watermark
            FROM audit_chain c ORDER BY c.position DESC LIMIT 1
            """
        )
        position = tip["position"] if tip else 0
        chain_hash = bytes(tip["hash"]) if tip else GENESIS_HASH
        watermark = (tip["watermark"] if tip else None) or 0
        rows = await conn.fetch(
            """
            SELECT e.seq, e.at, e.tenant, e.actor, e.action, e.outcome, e.source, e.object, e.details::text
            FROM audit_events e
            WHERE e.xid >= $1::xid8
              AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.seq = e.seq)
            ORDER BY e.seq
            LIMIT $2
            """,
            watermark,
            limit,
        )
        if not rows:
            return SealResult(0, position, full_batch=False)
        positions, seqs, prevs, hashes = [], [], [], []
        for row in rows:
            position += 1
            new_hash = link(chain_hash, _record(row))
            positions.append(position)
            seqs.append(row["seq"])
            prevs.append(chain_hash)
            hashes.append(new_hash)
            chain_hash = new_hash
        full = len(rows) == limit
        # A full batch may have left older events behind: keep the old watermark until caught up.
        new_watermark = watermark if full else xmin
        await conn.execute(
            """
            INSERT INTO audit_chain (position, seq, prev_hash, hash)
            SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bytea[], $4::bytea[])
            """,
            positions,
            seqs,
            prevs,
            hashes,
        )
        await conn.execute(
            """
            INSERT INTO audit_checkpoints (position, chain_hash, watermark, key_id, signature)
            VALUES ($1, $2, $3::xid8, $4, $5)
            """,
            position,
            chain_hash,
            new_watermark,
            key.key_id,
            key.sign(checkpoint_message(position, chain_hash, new_watermark)),
        )
        return SealResult(len(rows), position, full_batch=full)


@dataclass(frozen=True)
class SealBacklog:
    """Committed events not linked into the chain yet, and the age of the oldest (0.0: none)."""

    events: int
    oldest_age: float


async def seal_backlog(conn: Connection) -> SealBacklog:
    """What the sealer has still to do, for the metrics. Cheap while it keeps up: only events at or
    above the last watermark can be unsealed (``seal_batch``), an index range on ``audit_events_xid``."""
    row = await conn.fetchrow(
        """
        SELECT count(*) AS events, extract(epoch FROM now() - min(e.at))::float8 AS oldest_age
        FROM audit_events e
        WHERE e.xid >= coalesce(
                (SELECT watermark FROM audit_checkpoints ORDER BY position DESC LIMIT 1), '0'::xid8)
          AND NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.seq = e.seq)
        """
    )
    assert row is not None  # an aggregate always returns one row
    age = row["oldest_age"]
    return SealBacklog(int(row["events"]), max(float(age), 0.0) if age is not None else 0.0)


@dataclass(frozen=True)
class Tampered:
    position: int
    seq: int | None
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    sealed: int
    checkpoints: int
    unsealed: int
    tampered: Tampered | None

    @property
    def ok(self) -> bool:
        return self.tampered is None


async def verify_chain(conn: Connection, key: SealKey, *, batch: int = 5000) -> VerifyReport:
    """Walk the whole chain in one consistent snapshot; stop at the first row that does not check out."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        checkpoints = {
            row["position"]: row
            for row in await conn.fetch(
                "SELECT position, chain_hash, watermark, key_id, signature FROM audit_checkpoints"
            )
        }
        unsealed = await conn.fetchval(
            """
            SELECT count(*) FROM audit_events e
            WHERE NOT EXISTS (SELECT 1 FROM audit_chain c WHERE c.seq = e.seq)
            """
        )

        def report(tampered: Tampered | None, sealed: int) -> VerifyReport:
            return VerifyReport(sealed, len(checkpoints), int(unsealed), tampered)

        expected_position = 0
        chain_hash = GENESIS_HASH
        last_checkpoint = 0
        cursor = conn.cursor(
            """
            SELECT c.position, c.seq AS chain_seq, c.prev_hash, c.hash,
                   e.seq, e.at, e.tenant, e.actor, e.action, e.outcome, e.source, e.object, e.details::text
            FROM audit_chain c LEFT JOIN audit_events e ON e.seq = c.seq
            ORDER BY c.position
            """,
            prefetch=batch,
        )
        async for row in cursor:
            expected_position += 1
            position, seq = row["position"], row["chain_seq"]
            if position != expected_position:
                return report(
                    Tampered(expected_position, None, "chain position missing"), expected_position - 1
                )
            if bytes(row["prev_hash"]) != chain_hash:
                return report(Tampered(position, seq, "previous-hash link broken"), position - 1)
            if row["seq"] is None:
                return report(Tampered(position, seq, "sealed event deleted"), position - 1)
            if link(chain_hash, _record(row)) != bytes(row["hash"]):
                return report(Tampered(position, seq, "event content changed after sealing"), position - 1)
            chain_hash = bytes(row["hash"])
            checkpoint = checkpoints.get(position)
            if checkpoint is not None:
                message = checkpoint_message(position, chain_hash, checkpoint["watermark"])
                if bytes(checkpoint["chain_hash"]) != chain_hash:
                    return report(
                        Tampered(position, seq, "checkpoint does not match the chain"), position - 1
                    )
                if checkpoint["key_id"] != key.key_id or not key.verify(
                    message, bytes(checkpoint["signature"])
                ):
                    return report(Tampered(position, seq, "checkpoint signature invalid"), position - 1)
                last_checkpoint = position
        sealed = expected_position
        if last_checkpoint != sealed:
            # The sealer writes chain rows and their checkpoint in one transaction: rows past the
            # last checkpoint (or a checkpoint past the last row) were not written by it.
            return report(
                Tampered(last_checkpoint + 1, None, "chain rows not covered by a signed checkpoint"), sealed
            )
        if checkpoints and max(checkpoints) > sealed:
            return report(Tampered(sealed + 1, None, "chain truncated after a checkpoint"), sealed)
        return report(None, sealed)
