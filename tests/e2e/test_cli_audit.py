"""``payhub audit seal`` / ``payhub audit verify`` as an operator runs them."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from gateway.store.audit import append_event
from tests.support.processes import payhub_env, run_payhub


async def test_audit_verify_passes_then_names_the_tampered_row(payhub_home: Path, db_url: str) -> None:
    env = payhub_env(PAYHUB_HOME=str(payhub_home), PAYHUB_DATABASE_URL=db_url)
    conn = await asyncpg.connect(db_url)
    try:
        seqs = [await append_event(conn, actor="ops", action="demo", outcome="success") for _ in range(5)]
        sealed = run_payhub("audit", "seal", env=env)
        assert sealed.returncode == 0, sealed.stderr
        assert "sealed 5 events" in sealed.stdout
        await append_event(conn, actor="ops", action="demo", outcome="success")  # not sealed yet

        ok = run_payhub("audit", "verify", env=env)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "OK: 5 sealed events" in ok.stdout
        assert "1 recent events not sealed yet" in ok.stdout

        await conn.execute("SET session_replication_role = replica")
        await conn.execute("UPDATE audit_events SET outcome = 'failure' WHERE seq = $1", seqs[2])
        await conn.execute("SET session_replication_role = origin")
    finally:
        await conn.close()
    bad = run_payhub("audit", "verify", env=env)
    assert bad.returncode == 1
    assert f"TAMPERED at position 3 (event seq {seqs[2]})" in bad.stdout
    assert "event content changed after sealing" in bad.stdout
