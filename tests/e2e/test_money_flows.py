"""Capture, cancel, refunds, stored balances and asynchronous settlement, over real mTLS + PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.support.api import Api, card_payment


async def ledger_is_consistent(gw: RunningGateway) -> None:
    async with gw.api[DB_POOL].acquire() as conn:
        unbalanced = await conn.fetchval(
            "SELECT count(*) FROM (SELECT transaction_id, currency FROM ledger_entries "
            "GROUP BY transaction_id, currency HAVING sum(amount) <> 0) t"
        )
        assert unbalanced == 0
        drift = await conn.fetch(
            """
            SELECT a.id FROM ledger_accounts a
            LEFT JOIN (SELECT account_id,
                              sum(amount) FILTER (WHERE bucket = 'available') AS available,
                              sum(amount) FILTER (WHERE bucket = 'pending') AS pending
                       FROM ledger_entries GROUP BY account_id) e ON e.account_id = a.id
            WHERE a.kind = 'customer_balance'
              AND (a.available <> coalesce(e.available, 0) OR a.pending <> coalesce(e.pending, 0))
            """
        )
        assert drift == []


async def test_manual_capture_partial_then_refunds(acme: Api, gw: RunningGateway) -> None:
    created = await acme.post("/v1/payments", card_payment(amount=10000, capture_method="manual"))
    assert created.body["status"] == "requires_capture"
    pid = created.body["id"]
    too_much = await acme.post(f"/v1/payments/{pid}/capture", {"amount_to_capture": 10001})
    assert too_much.status == 400
    assert too_much.body["error"]["param"] == "amount_to_capture"
    captured = await acme.post(f"/v1/payments/{pid}/capture", {"amount_to_capture": 6000})
    assert captured.status == 200, captured.body
    assert (captured.body["status"], captured.body["amount_captured"]) == ("succeeded", 6000)
    again = await acme.post(f"/v1/payments/{pid}/capture", {})
    assert again.status == 409
    refund = await acme.post("/v1/refunds", {"payment": pid, "amount": 2500})
    assert refund.status == 200, refund.body
    assert (refund.body["status"], refund.body["amount"]) == ("succeeded", 2500)
    rest = await acme.post("/v1/refunds", {"payment": pid})
    assert rest.body["amount"] == 3500
    over = await acme.post("/v1/refunds", {"payment": pid, "amount": 1})
    assert over.status == 409
    payment = await acme.get(f"/v1/payments/{pid}")
    assert (payment.body["amount_captured"], payment.body["amount_refunded"]) == (6000, 6000)
    fetched = await acme.get(f"/v1/refunds/{refund.body['id']}")
    assert fetched.body == refund.body
    # The payment's refunds, newest first; one per page, then the next by cursor.
    other = await acme.post("/v1/payments", card_payment(amount=700))
    await acme.post("/v1/refunds", {"payment": other.body["id"]})
    listed = await acme.get("/v1/refunds", payment=pid)
    assert [r["id"] for r in listed.body["data"]] == [rest.body["id"], refund.body["id"]]
    first = await acme.get("/v1/refunds", payment=pid, limit=1)
    assert ([r["id"] for r in first.body["data"]], first.body["has_more"]) == ([rest.body["id"]], True)
    after = await acme.get("/v1/refunds", payment=pid, limit=1, starting_after=rest.body["id"])
    assert ([r["id"] for r in after.body["data"]], after.body["has_more"]) == ([refund.body["id"]], False)
    assert len((await acme.get("/v1/refunds")).body["data"]) == 3
    assert (await acme.get("/v1/refunds", payment="x" * 65)).body["error"]["param"] == "payment"
    await ledger_is_consistent(gw)


async def test_cancel_releases_an_authorization(acme: Api) -> None:
    created = await acme.post("/v1/payments", card_payment(capture_method="manual"))
    canceled = await acme.post(f"/v1/payments/{created.body['id']}/cancel", {})
    assert canceled.status == 200
    assert canceled.body["status"] == "canceled"
    capture = await acme.post(f"/v1/payments/{created.body['id']}/capture", {})
    assert capture.status == 409
    assert capture.body["error"]["code"] == "payment_unexpected_state"
    succeeded = await acme.post("/v1/payments", card_payment())
    cannot = await acme.post(f"/v1/payments/{succeeded.body['id']}/cancel", {})
    assert cannot.status == 409


async def test_concurrent_refunds_never_exceed_the_capture(acme: Api, gw: RunningGateway) -> None:
    created = await acme.post("/v1/payments", card_payment(amount=5000))
    pid = created.body["id"]
    replies = await asyncio.gather(
        *(acme.post("/v1/refunds", {"payment": pid, "amount": 700}) for _ in range(20))
    )
    succeeded = [r for r in replies if r.status == 200 and r.body["status"] == "succeeded"]
    assert len(succeeded) == 7  # 7 x 700 = 4900 <= 5000 < 8 x 700
    assert all(r.status in (200, 400, 409) for r in replies)
    payment = await acme.get(f"/v1/payments/{pid}")
    assert payment.body["amount_refunded"] == 4900
    await ledger_is_consistent(gw)


async def test_concurrent_captures_capture_once(acme: Api) -> None:
    created = await acme.post("/v1/payments", card_payment(capture_method="manual"))
    pid = created.body["id"]
    replies = await asyncio.gather(*(acme.post(f"/v1/payments/{pid}/capture", {}) for _ in range(10)))
    assert sorted(r.status for r in replies).count(200) == 1


async def balance_account(acme: Api, amount: int) -> str:
    account = await acme.post("/v1/accounts", {"currency": "CNY", "customer": "cus_7"}, key=None)
    assert account.status == 200, account.body
    assert account.body["balance"] == {"available": 0, "pending": 0}
    if amount:
        topup = await acme.post(
            f"/v1/accounts/{account.body['id']}/topups",
            {"amount": amount, "currency": "CNY", "payment_method": card_payment()["payment_method"]},
        )
        assert topup.status == 200, topup.body
        assert topup.body["status"] == "succeeded"
        assert topup.body["destination"] == account.body["id"]
    return str(account.body["id"])


def balance_payment(account: str, amount: int) -> dict[str, Any]:
    return {
        "amount": amount,
        "currency": "CNY",
        "payment_method": {"type": "balance", "balance": {"account": account}},
    }


async def test_balance_payments_never_overdraw_under_concurrency(acme: Api, gw: RunningGateway) -> None:
    account = await balance_account(acme, 10000)
    replies = await asyncio.gather(
        *(acme.post("/v1/payments", balance_payment(account, 3000)) for _ in range(8))
    )
    statuses = [r.body["status"] for r in replies]
    assert statuses.count("succeeded") == 3
    assert statuses.count("failed") == 5
    assert {r.body["failure"]["code"] for r in replies if r.body["status"] == "failed"} == {
        "insufficient_funds"
    }
    balance = await acme.get(f"/v1/accounts/{account}")
    assert balance.body["balance"] == {"available": 1000, "pending": 0}
    refund = await acme.post(
        "/v1/refunds", {"payment": next(r.body["id"] for r in replies if r.body["status"] == "succeeded")}
    )
    assert refund.body["status"] == "succeeded"
    balance = await acme.get(f"/v1/accounts/{account}")
    assert balance.body["balance"]["available"] == 4000
    entries = await acme.get(f"/v1/accounts/{account}/entries", limit="2")
    assert [e["amount"] for e in entries.body["data"]] == [3000, -3000]
    assert entries.body["has_more"] is True
    await ledger_is_consistent(gw)


async def test_bank_topup_is_pending_then_available(acme: Api, gw: RunningGateway) -> None:
    account = await balance_account(acme, 0)
    topup = await acme.post(
        f"/v1/accounts/{account}/topups",
        {
            "amount": 2500,
            "currency": "CNY",
            "payment_method": {
                "type": "bank_transfer",
                "bank_transfer": {"account_number": "6222000011112222"},
            },
        },
    )
    assert topup.body["status"] == "processing"
    assert (await acme.get(f"/v1/accounts/{account}")).body["balance"] == {"available": 0, "pending": 2500}
    for _ in range(60):
        await asyncio.sleep(0.2)
        payment = await acme.get(f"/v1/payments/{topup.body['id']}")
        if payment.body["status"] != "processing":
            break
    assert payment.body["status"] == "succeeded"
    assert (await acme.get(f"/v1/accounts/{account}")).body["balance"] == {"available": 2500, "pending": 0}
    await ledger_is_consistent(gw)


async def test_wallet_payment_requires_action_then_settles(acme: Api) -> None:
    reply = await acme.post(
        "/v1/payments",
        {
            "amount": 990,
            "currency": "CNY",
            "payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}},
        },
    )
    assert reply.body["status"] == "requires_action"
    assert reply.body["next_action"]["type"] == "qr_code"
    for _ in range(60):
        await asyncio.sleep(0.2)
        payment = await acme.get(f"/v1/payments/{reply.body['id']}")
        if payment.body["status"] != "requires_action":
            break
    assert payment.body["status"] == "succeeded"


async def test_rejected_bank_transfer_and_prepaid(acme: Api) -> None:
    bank = await acme.post(
        "/v1/payments",
        {
            "amount": 100,
            "currency": "CNY",
            "payment_method": {
                "type": "bank_transfer",
                "bank_transfer": {"account_number": "6222000011110002"},
            },
        },
    )
    assert (bank.body["status"], bank.body["failure"]["code"]) == ("failed", "bank_rejected")
    prepaid = {"type": "prepaid", "prepaid": {"code": "PP-12345678"}}
    first = await acme.post("/v1/payments", {"amount": 6000, "currency": "CNY", "payment_method": prepaid})
    assert first.body["status"] == "succeeded"
    second = await acme.post("/v1/payments", {"amount": 6000, "currency": "CNY", "payment_method": prepaid})
    assert (second.body["status"], second.body["failure"]["code"]) == ("failed", "insufficient_funds")


async def test_card_on_file_token_pays(acme: Api) -> None:
    token = await acme.post(
        "/v1/tokens", {"card": {"number": "5555555555554444", "exp_month": 1, "exp_year": 2031}}, key=None
    )
    assert token.status == 200, token.body
    assert token.body["card"]["brand"] == "mastercard"
    reply = await acme.post(
        "/v1/payments",
        {
            "amount": 500,
            "currency": "CNY",
            "payment_method": {"type": "card", "card": {"token": token.body["id"]}},
        },
    )
    assert reply.body["status"] == "succeeded"
    assert reply.body["payment_method"]["card"]["token"] == token.body["id"]
