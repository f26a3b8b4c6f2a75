"""Database round trips per card payment (DESIGN §10 budgets about three; issue "Risk": no more
than before the risk engine). Every statement a request sends on a pooled connection is counted
with asyncpg's query logger; BEGIN and COMMIT count too. Statements of background work (the audit
sealer, the resolver, ...) on the same pool are not the request's: they run outside any request."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg
import msgspec
import pytest

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from gateway.logs import current_request_id
from gateway.server import RunningGateway
from tests.support.api import api_client, card_payment
from tests.support.mtls import gateway


class Counter:
    def __init__(self) -> None:
        self.queries: list[str] = []
        self.raw: list[str] = []  # as sent (comments and line breaks kept)

    def __call__(self, record: Any) -> None:
        # asyncpg calls loggers with call_soon, in the context of the code that sent the statement.
        if current_request_id() is None:
            return
        self.queries.append(" ".join(record.query.split()))
        self.raw.append(record.query)


def count_statements(gw: RunningGateway, counter: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Log every statement of every connection the pool hands out. asyncpg calls a holder's
    ``setup`` on each acquire; the pool offers no public way to add one after creation, hence the
    private attribute (a test-only reach-in)."""

    async def setup(conn: Any) -> None:
        conn.add_query_logger(counter)

    for holder in gw.api[DB_POOL]._holders:  # type: ignore[attr-defined]
        monkeypatch.setattr(holder, "_setup", setup)


async def sent(settings: Settings, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> Counter:
    async with gateway(settings) as gw, api_client(pki, "acme", gw.api_port) as acme:
        warm = await acme.post("/v1/payments", card_payment())  # prepared statements cached from here on
        assert warm.body["status"] == "succeeded"
        counter = Counter()
        with monkeypatch.context() as patch:
            count_statements(gw, counter, patch)
            paid = await acme.post("/v1/payments", card_payment(number="5555555555554444"))
        assert paid.body["status"] == "succeeded"
    return counter


async def round_trips(settings: Settings, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    return (await sent(settings, pki, monkeypatch)).queries


async def test_risk_adds_no_round_trip_to_a_card_payment(
    settings: Settings, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    without = await round_trips(
        msgspec.structs.replace(settings, risk=msgspec.structs.replace(settings.risk, enabled=False)),
        pki,
        monkeypatch,
    )
    with_risk = await round_trips(settings, pki, monkeypatch)
    print(f"\nround trips per card payment: {len(without)} without risk, {len(with_risk)} with risk")
    for query in with_risk:
        print("  ", query[:70])
    # The feature read (velocity, history, lists) rides in the vault's statement, the payment's
    # velocity count in the statement that records it, and the decision on the row it writes.
    assert len(with_risk) == len(without)
    [vault] = [q for q in with_risk if "INSERT INTO card_tokens" in q]
    assert "risk_counters" in vault and "risk_list_entries" in vault
    [record] = [q for q in with_risk if "INSERT INTO payments" in q]
    assert "INSERT INTO risk_counters" in record


# ---- plan stability ------------------------------------------------------------------------------

# Tables a card payment touches whose size grows with traffic: their rows must be found by key.
GROWING = {"payments", "payment_attempts", "idempotency_keys", "events"}
GROW = [
    """INSERT INTO payments (id, tenant, status, amount, currency, method, payment_method, capture_method,
                           customer_id, metadata, created)
       SELECT 'pay_bulk' || n, 'acme', 'succeeded', 100, 'CNY', 'card', '{}', 'automatic', 'cus_' || n % 50,
              '{}', now() - make_interval(secs => n)
       FROM generate_series(1, 20000) AS n""",
    """INSERT INTO payment_attempts (id, payment_id, tenant, operation, connector, amount, status)
       SELECT 'att_bulk' || n, 'pay_bulk' || n, 'acme', 'authorize', 'iso8583_card', 100, 'succeeded'
       FROM generate_series(1, 20000) AS n""",
    """INSERT INTO idempotency_keys (tenant, key, request_method, request_path, request_hash)
       SELECT 'acme', 'bulk' || n, 'POST', '/v1/payments', '\\x00' FROM generate_series(1, 20000) AS n""",
    """INSERT INTO events (id, tenant, type, object_id, data)
       SELECT 'evt_bulk' || n, 'acme', 'payment.succeeded', 'pay_bulk' || n, '{}'
       FROM generate_series(1, 20000) AS n""",
]
# The payment by its id; the risk features read the customer's history by its own indexes. Never
# an index that narrows only by tenant (and status), whose scan grows with the tenant's traffic.
BY_KEY = {"payments_pkey", "payments_tenant_customer", "payments_customer_device"}


def _scans(plan: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    found = []
    if "Relation Name" in plan:
        found.append((plan["Relation Name"], plan["Node Type"], plan.get("Index Name")))
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def test_hot_statements_find_rows_by_key_whatever_the_statistics(
    settings: Settings, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's trap: with statistics taken when a table was small (autovacuum off, no ANALYZE
    since), a payment UPDATE was planned on payments_tenant_status instead of the primary key and
    throughput halved. Every statement of a card payment, as a generic plan (what a prepared
    statement runs after a few executions), on tables whose statistics say they hold a few rows
    while they hold 20,000, must reach the growing tables by key: no sequential scan, and the
    payments row by its primary key (or the customer's history by the customer's indexes)."""
    queries = (await sent(settings, pki, monkeypatch)).raw
    conn = await asyncpg.connect(settings.database.url)
    try:
        await conn.execute("ANALYZE")  # statistics of small tables…
        for grow in GROW:  # …then the tables grow, and nobody analyzes them
            await conn.execute(grow)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        for number, query in enumerate(queries):
            params = max((int(n) for n in re.findall(r"\$(\d+)", query)), default=0)
            await conn.execute(f"PREPARE hot{number} AS {query}")
            args = ", ".join(["NULL"] * params)
            plan = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) EXECUTE hot{number}({args})"
                if params
                else f"EXPLAIN (FORMAT JSON) EXECUTE hot{number}"
            )
            for relation, node, index in _scans(json.loads(plan)[0]["Plan"]):
                if relation in GROWING:
                    assert node != "Seq Scan", f"{relation} scanned in full by: {query[:90]}"
                if relation == "payments" and index is not None:
                    assert index in BY_KEY, f"payments reached by {index} in: {query[:90]}"
    finally:
        await conn.close()
