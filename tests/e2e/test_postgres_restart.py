"""Issue #16, faults of the world outside: PostgreSQL crashes and restarts while payments run.

Real processes (``payhub sandbox``, ``payhub serve``) over a private cluster (tests/support/pgcluster.py)
that is stopped with ``pg_ctl stop -m immediate`` (no checkpoint: crash recovery on start) and started
again on the same port after 3 s. Clients retry as documented (same key, same bytes) on 503, on 409
``request_in_progress`` and on a lost connection. The gateway must answer the outage with 503 and never
500, stay up, become ready again, and leave exactly one payment and one acquirer charge per key.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from connectors.iso8583_card.transformers import rrn_for
from crypto.pki import PkiPaths
from gateway.middlewares import database_outage
from gateway.store.idempotency import LOCK_SECONDS
from gateway.store.migrate import migrate
from tests.model.harness import Client, History, Operation, Sandbox, Stack, Try
from tests.model.requests import APPROVED, SLOW, card
from tests.support.pgcluster import Cluster

TASKS = 8
PAYMENTS_PER_TASK = 5
PACE = 1.0  # s between two payments of one task, so the load spans the outage
DOWN_FOR = 3.0
DEADLINE = 90.0  # until every key has its final answer


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="payhub-pgrestart-"))  # not tmp_path: see pgcluster's docstring
    created = await asyncio.to_thread(Cluster.create, root)
    try:
        yield created
    finally:
        await asyncio.to_thread(created.destroy)
        shutil.rmtree(root, ignore_errors=True)


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_cluster_keeps_committed_rows_through_an_immediate_stop(cluster: Cluster) -> None:
    assert cluster.url == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    url = await asyncio.to_thread(cluster.create_database, "crash_me")
    assert url == f"postgresql://postgres@127.0.0.1:{cluster.port}/crash_me"
    await _execute(url, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")

    await asyncio.to_thread(cluster.stop, "immediate")
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(url, timeout=2)
    await asyncio.to_thread(cluster.start)
    assert [r["n"] for r in await _fetch(url, "SELECT n FROM t")] == [1]

    await _execute(url, "INSERT INTO t VALUES (2)")
    restart = cluster.restart_in_background(0.2)
    await asyncio.to_thread(restart.join, 30)
    assert not restart.is_alive()
    assert [r["n"] for r in await _fetch(url, "SELECT n FROM t ORDER BY n")] == [1, 2]

    await asyncio.to_thread(cluster.destroy)
    await asyncio.to_thread(cluster.destroy)  # idempotent
    assert not cluster.data.exists()


def test_only_connection_level_failures_count_as_a_database_outage() -> None:
    assert database_outage(asyncpg.CannotConnectNowError("the database system is starting up"))
    assert database_outage(asyncpg.AdminShutdownError("terminating connection"))
    assert database_outage(asyncpg.ConnectionDoesNotExistError("closed in the middle of operation"))
    assert database_outage(asyncpg.InterfaceError("cannot perform operation: connection is closed"))
    assert not database_outage(asyncpg.InterfaceError("another operation is in progress"))
    assert not database_outage(asyncpg.UniqueViolationError("duplicate key"))
    assert not database_outage(asyncpg.QueryCanceledError("canceling statement"))  # 57014, not 57P
    assert not database_outage(ConnectionResetError("not from asyncpg"))  # e.g. a connector's bug
    assert not database_outage(ValueError("a bug"))


# ---- the gateway through a restart ---------------------------------------------------------------


def _code(attempt: Try) -> str | None:
    body = attempt.body
    error = body.get("error") if isinstance(body, dict) else None
    return error.get("code") if isinstance(error, dict) else None


def _retry(attempt: Try) -> bool:
    """Not an answer to the request yet: no answer, 503, or 409 request_in_progress."""
    return attempt.status is None or attempt.status == 503 or attempt.in_progress


async def _settle(client: Client, op: Operation, deadline: float) -> None:
    while _retry(await client.send(op)):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.2)


async def _pay(client: Client, task: int, started: asyncio.Event, deadline: float) -> list[Operation]:
    operations = []
    for n in range(PAYMENTS_PER_TASK):
        # The second payment of each task waits 3 s at the acquirer: the crash hits it between the
        # connector call and the transaction that records the answer.
        number = SLOW if n == 1 else APPROVED
        body = card(number, 1000 + 100 * task + n, f"cus_pgrestart_{task}")
        op = client.operation(f"task {task} #{n}", "POST", "/v1/payments", body)
        operations.append(op)
        if n == 1:
            started.set()
        await _settle(client, op, deadline)
        await asyncio.sleep(PACE)
    return operations


async def _metric(session: aiohttp.ClientSession, ops_port: int, pattern: str) -> float:
    async with session.get(f"http://127.0.0.1:{ops_port}/metrics") as resp:
        found = re.search(pattern + r" ([0-9.e+]+)", await resp.text())
    return float(found[1]) if found else 0.0


async def _until_ready(session: aiohttp.ClientSession, ops_port: int, deadline: float) -> int:
    status = 0
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{ops_port}/readyz") as resp:
                status = resp.status
        except aiohttp.ClientError:
            status = 0
        if status == 200:
            break
        await asyncio.sleep(0.2)
    return status


async def test_payments_through_a_postgres_crash_and_restart(
    cluster: Cluster, payhub_home: Path, pki: PkiPaths, tmp_path: Path
) -> None:
    db_url = await asyncio.to_thread(cluster.create_database, "payhub")
    conn = await asyncpg.connect(db_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    stack = Stack(payhub_home, db_url, tmp_path)
    history = History()
    client = Client(stack, pki, history)
    sandbox = Sandbox(stack)
    try:
        await stack.start()
        began = time.monotonic()
        deadline = began + DEADLINE
        started = [asyncio.Event() for _ in range(TASKS)]
        tasks = [asyncio.create_task(_pay(client, t, started[t], deadline)) for t in range(TASKS)]
        # Crash while every task's slow payment is at the acquirer, with more payments to come.
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 30)
        await asyncio.sleep(0.5)
        restart = cluster.restart_in_background(DOWN_FOR, mode="immediate")
        crashed_at = time.monotonic() - began
        operations = [op for ops in await asyncio.gather(*tasks) for op in ops]
        await asyncio.to_thread(restart.join, 60)
        assert not restart.is_alive()
        settled_at = time.monotonic() - began

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            assert await _until_ready(session, stack.ops_port, time.monotonic() + 30) == 200
            # The resolver (a background worker) lived through the outage and passes again.
            passes = await _metric(session, stack.ops_port, r'payhub_resolver_passes_total\{outcome="ok"\}')
            await asyncio.sleep(1.5)
            assert (
                await _metric(session, stack.ops_port, r'payhub_resolver_passes_total\{outcome="ok"\}')
                > passes
            )
        assert stack.gateway_alive(), "the gateway exited during the database restart"

        tries = [t for op in operations for t in op.tries]
        unavailable = [t for t in tries if t.status == 503]
        in_progress, lost = sum(t.in_progress for t in tries), sum(t.status is None for t in tries)
        print(
            f"\n{len(operations)} payments, {len(tries)} tries, crash at {crashed_at:.1f} s, all answered "
            f"at {settled_at:.1f} s; 503: {len(unavailable)}, 409: {in_progress}, no answer: {lost}"
        )
        assert [t.status for t in tries if t.status is not None and t.status >= 500 and t.status != 503] == []
        assert {_code(t) for t in unavailable} <= {"database_unavailable"}
        assert unavailable, "no request met the outage: the test did not test it"
        unanswered = [op.summary() for op in operations if _retry(op.tries[-1])]
        assert unanswered == [], f"no final answer within {DEADLINE} s"
        # A key cut off by the crash is given up once the database is back, not when its lock runs out.
        slow = [op for op in operations if op.body["payment_method"]["card"]["number"] == SLOW]
        waited = max(op.tries[-1].at - op.tries[0].at + op.tries[0].elapsed for op in slow)
        assert waited < LOCK_SECONDS - 2, f"a key stayed in progress for {waited:.1f} s"
        answers = {op.key: op.tries[-1].body for op in operations}
        assert all(op.tries[-1].status == 200 for op in operations), [op.summary() for op in operations]
        assert {a["status"] for a in answers.values()} == {"succeeded"}
        ids = {a["id"] for a in answers.values()}
        assert len(ids) == len(operations)  # one payment per key

        payments = await _fetch(db_url, "SELECT id, status, amount FROM payments")
        assert {p["id"]: p["status"] for p in payments} == dict.fromkeys(ids, "succeeded")
        keys = await _fetch(db_url, "SELECT key, object_id, response_status FROM idempotency_keys")
        assert {k["key"]: (k["object_id"], k["response_status"]) for k in keys} == {
            key: (answer["id"], 200) for key, answer in answers.items()
        }

        # The acquirer's books: exactly one charge per payment, of its amount, and none without one.
        attempts = await _fetch(
            db_url, "SELECT id, payment_id FROM payment_attempts WHERE connector = 'iso8583_card'"
        )
        payment_of = {rrn_for(a["id"]): a["payment_id"] for a in attempts}
        charges = [c for c in (await sandbox.books())["acquirer"]["charges"] if c["charged"] > 0]
        assert [c["rrn"] for c in charges if c["rrn"] not in payment_of] == [], "charge without a payment"
        charged: dict[str, list[int]] = {}
        for charge in charges:
            charged.setdefault(payment_of[charge["rrn"]], []).append(charge["charged"])
        assert charged == {p["id"]: [p["amount"]] for p in payments}

        unbalanced = await _fetch(
            db_url,
            """SELECT transaction_id, currency, sum(amount) AS total FROM ledger_entries
               GROUP BY 1, 2 HAVING sum(amount) <> 0""",
        )
        assert unbalanced == []
        assert (await _fetch(db_url, "SELECT count(*) AS n FROM ledger_entries"))[0]["n"] > 0

        log = stack.gateway_log.read_text(errors="replace")
        assert "worker.crashed" not in log
        assert "http.unhandled_error" not in log
    finally:
        await client.close()
        await sandbox.close()
        stack.stop()
