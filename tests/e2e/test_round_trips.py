"""Database round trips per card payment (DESIGN §10 budgets about three; issue "Risk": no more
than before the risk engine). Every statement a request sends on a pooled connection is counted
with asyncpg's query logger; BEGIN and COMMIT count too."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.support.api import api_client, card_payment
from tests.support.mtls import gateway


class Counter:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def __call__(self, record: Any) -> None:
        self.queries.append(" ".join(record.query.split()))


def count_statements(gw: RunningGateway, counter: Counter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Log every statement of every connection the pool hands out. asyncpg calls a holder's
    ``setup`` on each acquire; the pool offers no public way to add one after creation, hence the
    private attribute (a test-only reach-in)."""

    async def setup(conn: Any) -> None:
        conn.add_query_logger(counter)

    for holder in gw.api[DB_POOL]._holders:  # type: ignore[attr-defined]
        monkeypatch.setattr(holder, "_setup", setup)


async def round_trips(settings: Settings, pki: PkiPaths, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    async with gateway(settings) as gw, api_client(pki, "acme", gw.api_port) as acme:
        warm = await acme.post("/v1/payments", card_payment())  # prepared statements cached from here on
        assert warm.body["status"] == "succeeded"
        counter = Counter()
        with monkeypatch.context() as patch:
            count_statements(gw, counter, patch)
            paid = await acme.post("/v1/payments", card_payment(number="5555555555554444"))
        assert paid.body["status"] == "succeeded"
    return counter.queries


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
