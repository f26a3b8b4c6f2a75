"""The benchmark's reference servers (load/reference.py) over real mTLS and a real PostgreSQL.

Reference B must be the minimal *durable* payment: its record is committed before the acquirer is
asked, and it answers only once the outcome is committed too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from config.settings import Settings
from load.payments_loop import card_body, ssl_context
from load.reference import (
    AcquirerLink,
    RunningReference,
    StubProtocol,
    answer_to,
    authorization,
    frame,
    start_acquirer_stub,
    start_reference,
)

DELAY = 0.4  # seconds the slow acquirer takes to answer


class SlowStub(StubProtocol):
    """The stub, answering each message after DELAY seconds."""

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(DELAY, super().data_received, data)


@pytest.fixture
async def slow_acquirer() -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(SlowStub, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def reference_b(settings: Settings, db_url: str, slow_acquirer: int) -> AsyncIterator[RunningReference]:
    running = await start_reference("b", settings, db_url, acquirer=("127.0.0.1", slow_acquirer))
    yield running
    await running.close()


def client(home: Path) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context(home, "acme")))


async def test_b_commits_the_record_first_and_answers_after_the_outcome_is_committed(
    reference_b: RunningReference, db_url: str, payhub_home: Path
) -> None:
    url = f"https://localhost:{reference_b.port}/v1/payments"
    conn = await asyncpg.connect(db_url)
    try:
        async with client(payhub_home) as session:
            answer = asyncio.ensure_future(
                session.post(url, json=card_body(7), headers={"Idempotency-Key": "k-7"})
            )
            await asyncio.sleep(DELAY / 2)  # B is waiting for the acquirer now
            assert not answer.done()
            row = await conn.fetchrow(
                "SELECT status, auth_code FROM bench_reference_b WHERE idempotency_key = 'k-7'"
            )
            assert row is not None, "the record is committed before the acquirer is asked"
            assert (row["status"], row["auth_code"]) == ("processing", None)

            async with await answer as resp:
                assert resp.status == 200
                body = await resp.json()
            # The answer came: the outcome it carries is already committed.
            row = await conn.fetchrow(
                "SELECT id, status, auth_code, amount, currency FROM bench_reference_b "
                "WHERE idempotency_key = 'k-7'"
            )
            assert row is not None
            assert body["status"] == row["status"] == "succeeded"
            assert body["auth_code"] == row["auth_code"]
            assert len(row["auth_code"]) == 6
            assert (row["amount"], row["currency"]) == (card_body(7)["amount"], "CNY")

            # The same key again: the recorded outcome, no second record, no second acquirer call.
            async with session.post(url, json=card_body(7), headers={"Idempotency-Key": "k-7"}) as resp:
                assert resp.status == 200
                replay = await resp.json()
            assert replay["id"] == body["id"] == f"refb_{row['id']}"
            assert replay["status"] == "succeeded"
            assert await conn.fetchval("SELECT count(*) FROM bench_reference_b") == 1
    finally:
        await conn.close()


async def test_b_shares_one_acquirer_link_between_concurrent_payments(
    reference_b: RunningReference, payhub_home: Path
) -> None:
    """Ten payments at once take about one acquirer delay, not ten: the link is multiplexed."""
    url = f"https://localhost:{reference_b.port}/v1/payments"
    async with client(payhub_home) as session:

        async def pay(n: int) -> int:
            async with session.post(url, json=card_body(n), headers={"Idempotency-Key": f"m-{n}"}) as resp:
                await resp.read()
                return resp.status

        started = asyncio.get_running_loop().time()
        assert await asyncio.gather(*(pay(n) for n in range(10))) == [200] * 10
        assert asyncio.get_running_loop().time() - started < DELAY * 4


async def test_a_inserts_one_row_per_request(settings: Settings, db_url: str, payhub_home: Path) -> None:
    running = await start_reference("a", settings, db_url)
    try:
        async with (
            client(payhub_home) as session,
            session.post(f"https://localhost:{running.port}/v1/payments", json=card_body(1)) as resp,
        ):
            assert resp.status == 200
            assert (await resp.json())["status"] == "succeeded"
        conn = await asyncpg.connect(db_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM bench_reference") == 1
        finally:
            await conn.close()
    finally:
        await running.close()


async def test_the_link_matches_out_of_order_answers_by_request_id() -> None:
    stub = await start_acquirer_stub()
    link = AcquirerLink("127.0.0.1", stub.sockets[0].getsockname()[1])
    try:
        answers = await asyncio.gather(*(link.authorize(100 + n, "CNY", f"key-{n}") for n in range(20)))
    finally:
        await link.close()
        stub.close()
        await stub.wait_closed()
    for n, answer in enumerate(answers):
        assert answer[12:14] == b"00"
        assert f"{100 + n:012d}".encode() in answer  # its own request echoed back
    message = frame(authorization(1, 12850, "CNY", "k"))
    assert len(message) == 120
    assert len(frame(answer_to(message[2:]))) <= 120
