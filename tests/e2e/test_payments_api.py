"""Payments over real mTLS against real PostgreSQL: create, decline codes, reads, idempotency."""

from __future__ import annotations

import asyncio

import pytest

from gateway.server import RunningGateway
from tests.support.api import Api, card_payment


async def test_card_payment_succeeds_and_shows_only_display_data(acme: Api) -> None:
    reply = await acme.post("/v1/payments", card_payment())
    assert reply.status == 200, reply.body
    payment = reply.body
    assert payment["id"].startswith("pay_")
    assert payment["status"] == "succeeded"
    assert (payment["amount"], payment["amount_captured"], payment["amount_refunded"]) == (12850, 12850, 0)
    card = payment["payment_method"]["card"]
    assert (card["brand"], card["bin"], card["last4"]) == ("visa", "411111", "1111")
    assert card["token"].startswith("tok_")
    assert b"4111111111111111" not in reply.raw
    assert b"123" not in reply.raw.replace(b"12850", b"")
    fetched = await acme.get(f"/v1/payments/{payment['id']}")
    assert fetched.body == payment


@pytest.mark.parametrize(
    ("number", "code"),
    [
        ("4000000000000002", "do_not_honor"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000069", "expired_card"),
        ("4000000000000127", "incorrect_cvc"),
        ("4000000000000119", "connector_unavailable"),
    ],
)
async def test_declines_are_200_failed_with_a_unified_code(acme: Api, number: str, code: str) -> None:
    reply = await acme.post("/v1/payments", card_payment(number))
    assert reply.status == 200
    assert reply.body["status"] == "failed"
    assert reply.body["failure"]["code"] == code
    assert reply.body["amount_captured"] == 0


async def test_same_key_same_body_replays_byte_for_byte(acme: Api) -> None:
    first = await acme.post("/v1/payments", card_payment(), key="order-1")
    again = await acme.post("/v1/payments", card_payment(), key="order-1")
    assert again.status == first.status == 200
    assert again.raw == first.raw
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers


async def test_same_key_other_body_is_refused(acme: Api) -> None:
    await acme.post("/v1/payments", card_payment(), key="order-2")
    reply = await acme.post("/v1/payments", card_payment(amount=1), key="order-2")
    assert reply.status == 422
    assert (reply.body["error"]["type"], reply.body["error"]["code"]) == (
        "idempotency_error",
        "idempotency_key_reused",
    )


async def test_validation_failures_are_not_stored(acme: Api) -> None:
    bad = await acme.post("/v1/payments", card_payment(amount=0), key="order-3")
    assert bad.status == 400
    assert bad.body["error"]["param"] == "amount"
    good = await acme.post("/v1/payments", card_payment(), key="order-3")
    assert good.status == 200


async def test_missing_idempotency_key(acme: Api) -> None:
    reply = await acme.post("/v1/payments", card_payment(), key=None)
    assert reply.status == 400
    assert reply.body["error"]["param"] == "Idempotency-Key"


async def test_fifty_concurrent_identical_requests_make_one_payment(acme: Api, gw: RunningGateway) -> None:
    replies = await asyncio.gather(
        *(acme.post("/v1/payments", card_payment(), key="burst") for _ in range(50))
    )
    statuses = sorted({r.status for r in replies})
    assert set(statuses) <= {200, 409}
    ids = {r.body["id"] for r in replies if r.status == 200}
    assert len(ids) == 1
    for r in replies:
        if r.status == 409:
            assert r.body["error"]["code"] == "request_in_progress"
    from connectors.inprocess import InProcessConnector
    from gateway.keys import CONNECTORS, DB_POOL

    connector = gw.api[CONNECTORS].payment["inprocess"]
    assert isinstance(connector, InProcessConnector)
    assert sum(connector.charges.values()) == 1
    async with gw.api[DB_POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payments") == 1
        assert await conn.fetchval("SELECT count(*) FROM payment_attempts") == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {
                "amount": 100,
                "currency": "XXX",
                "payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}},
            },
            "currency",
        ),
        ({"amount": 100, "currency": "CNY", "payment_method": {"type": "card"}}, "payment_method.card"),
        ({"amount": 100, "currency": "CNY", "payment_method": {"type": "cash"}}, "payment_method.type"),
        (card_payment("4111111111111112"), "payment_method.card"),
        ({**card_payment(), "amount": 1.5}, "amount"),
        ({**card_payment(), "surprise": 1}, "surprise"),
        ({"currency": "CNY", "payment_method": {"type": "card"}}, "amount"),
    ],
)
async def test_bad_input_is_a_clear_400_naming_the_field(acme: Api, body: dict, param: str) -> None:
    reply = await acme.post("/v1/payments", body)
    assert reply.status == 400, reply.body
    assert reply.body["error"]["type"] == "invalid_request_error"
    assert reply.body["error"]["param"] == param
    assert "4111111111111112" not in reply.body["error"]["message"]
