"""The way past one PostgreSQL (docs/scaling.md): which tables would distribute by ``tenant`` with Citus
today, read off the migrated schema itself.

A table distributes by tenant when it has a ``tenant`` column, every primary and unique key includes
it, and every foreign key to another distributed table includes it (so rows that join live on one
node). Reference tables are small, global and replicated to every node instead. The test fails when
a migration changes the picture, so a new table is classified on purpose and docs/scaling.md stays
true; it names each blocker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

# Global by design: replicated to every node (Citus reference tables) or kept on the coordinator.
REFERENCE = {
    "data_keys",  # the keyring: every node encrypts and decrypts
    "schema_migrations",
    "risk_list_entries",  # allow/deny lists, some for every tenant (tenant NULL)
    "audit_chain",  # one hash chain over every tenant's audit events, sealed by one process
    "audit_checkpoints",
    "recon_runs",  # per biller and day, across tenants
    "recon_items",
}

# Would distribute by tenant as they are.
READY = {"customer_preferences", "idempotency_keys", "risk_counters", "risk_lockouts", "risk_seen"}

# Would not distribute today: a key on a global id alone (`id`, `seq`, `payment_id`), or no tenant
# column. The fix is the same for each: (tenant, id) keys and tenant in the foreign keys.
BLOCKED = {
    "audit_events",
    "card_tokens",
    "events",
    "fx_quotes",
    "ledger_accounts",
    "ledger_entries",
    "ledger_transactions",
    "notification_messages",
    "payment_attempts",
    "payments",
    "refunds",
    "reminder_notices",
    "reminders",
    "risk_challenges",
    "risk_devices",
    "webhook_deliveries",
    "webhook_endpoints",
}

_TABLES = """
SELECT c.relname AS name,
       EXISTS (SELECT 1 FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = 'tenant' AND NOT a.attisdropped) AS has_tenant
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
"""
_UNIQUE_KEYS = """
SELECT t.relname AS tbl, i.relname AS key,
       coalesce(array_agg(a.attname) FILTER (WHERE a.attname IS NOT NULL), '{}') AS columns
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = ANY (x.indkey)
WHERE n.nspname = 'public' AND x.indisunique
GROUP BY 1, 2
"""
_FOREIGN_KEYS = """
SELECT c.conrelid::regclass::text AS tbl, c.confrelid::regclass::text AS ref, c.conname AS key,
       (SELECT array_agg(a.attname) FROM pg_attribute a
        WHERE a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)) AS columns
FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
WHERE c.contype = 'f' AND n.nspname = 'public'
"""


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def blockers(conn: asyncpg.Connection) -> dict[str, list[str]]:
    """Every table outside REFERENCE → why it would not distribute by tenant (empty: it would)."""
    tables = {r["name"]: r["has_tenant"] for r in await conn.fetch(_TABLES)}
    found: dict[str, list[str]] = {name: [] for name in tables if name not in REFERENCE}
    for name, has_tenant in tables.items():
        if name in found and not has_tenant:
            found[name].append("no tenant column")
    for row in await conn.fetch(_UNIQUE_KEYS):
        if row["tbl"] in found and "tenant" not in row["columns"]:
            found[row["tbl"]].append(f"unique key {row['key']} ({', '.join(row['columns'])}) without tenant")
    for row in await conn.fetch(_FOREIGN_KEYS):
        if row["tbl"] in found and row["ref"] not in REFERENCE and "tenant" not in row["columns"]:
            found[row["tbl"]].append(f"foreign key {row['key']} to {row['ref']} without tenant")
    return found


async def test_tables_that_would_not_distribute_by_tenant_today(conn: asyncpg.Connection) -> None:
    found = await blockers(conn)
    missing = set(found) - READY - BLOCKED
    assert not missing, f"classify these new tables (docs/scaling.md): {sorted(missing)}"
    ready = {name for name, why in found.items() if not why}
    report = "\n".join(f"  {name}: {'; '.join(why)}" for name, why in sorted(found.items()) if why)
    assert ready == READY, f"ready now: {sorted(ready)}; blocked:\n{report}"
    assert set(found) - ready == BLOCKED, report
