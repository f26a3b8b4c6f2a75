"""FX end to end: rates from the FX feed simulator over HTTP, quotes that lock them, and a CNY
balance or card paying a USD bill (bil_us_power) at the quoted rate, with the ledger balanced in
each currency on its own; expired, foreign, reused and mismatched quotes are refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from config.settings import Settings
from connectors.sandbox.fx import FxSandbox
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from tests.e2e.test_money_flows import balance_account, ledger_is_consistent
from tests.support.api import Api, api_client, card_payment
from tests.support.billers import Running, biller_stack

US_ACCOUNT = "0041234567"


@pytest.fixture
async def feed(settings: Settings) -> AsyncIterator[FxSandbox]:
    sandbox = await FxSandbox(settings, port=0).start()
    try:
        yield sandbox
    finally:
        await sandbox.close()


@pytest.fixture
async def running(settings: Settings, feed: FxSandbox) -> AsyncIterator[Running]:
    fx = msgspec.structs.replace(settings.fx, refresh_interval=0.2, max_rate_age=3.0)
    sandbox = msgspec.structs.replace(settings.sandbox, fx=feed.port)
    async with biller_stack(msgspec.structs.replace(settings, fx=fx, sandbox=sandbox)) as stack:
        yield stack


@pytest.fixture
async def acme(running: Running, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "acme", running.gw.api_port) as api:
        deadline = time.monotonic() + 10
        while (await api.get("/v1/fx/rates")).status != 200:  # the first read of the feed
            assert time.monotonic() < deadline, "no FX rates within 10 s"
            await asyncio.sleep(0.1)
        yield api


@pytest.fixture
async def globex(running: Running, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "globex", running.gw.api_port) as api:
        yield api


async def us_bill(acme: Api, account: str = US_ACCOUNT) -> dict[str, Any]:
    fetched = await acme.post(
        "/v1/bills/fetch",
        {"biller": "bil_us_power", "customer_params": {"account_number": account}},
        key=None,
    )
    assert fetched.status == 200, fetched.body
    bill = dict(fetched.body["data"][0])
    assert bill["currency"] == "USD"
    return bill


async def quote_for(acme: Api, bill: dict[str, Any]) -> dict[str, Any]:
    quoted = await acme.post(
        "/v1/fx/quotes",
        {"from_currency": "CNY", "to_currency": "USD", "to_amount": bill["amount_due"]},
        key=None,
    )
    assert quoted.status == 200, quoted.body
    return dict(quoted.body)


def pay_bill(
    bill: dict[str, Any], quote: dict[str, Any], method: dict[str, Any], account: str = US_ACCOUNT
) -> Any:
    return {
        "amount": quote["from_amount"],
        "currency": "CNY",
        "payment_method": method,
        "bill": {
            "biller": "bil_us_power",
            "customer_params": {"account_number": account},
            "bill_ref": bill["bill_ref"],
        },
        "fx_quote": quote["id"],
    }


async def account_sums(running: Running, pattern: str) -> dict[str, int]:
    async with running.gw.api[DB_POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT account_id, sum(amount) AS total FROM ledger_entries WHERE account_id LIKE $1 GROUP BY 1",
            pattern,
        )
    return {row["account_id"]: int(row["total"]) for row in rows}


async def test_rates_are_served_with_as_of(acme: Api) -> None:
    rates = await acme.get("/v1/fx/rates?base=CNY")
    assert rates.status == 200, rates.body
    assert rates.body["base"] == "CNY" and rates.body["as_of"].endswith("Z")
    assert Decimal("0.13") < Decimal(rates.body["rates"]["USD"]) < Decimal("0.15")  # 1 / 7.1 ± 0.1 %
    bad = await acme.get("/v1/fx/rates?base=XXX")
    assert (bad.status, bad.body["error"]["param"]) == (400, "base")


async def test_cny_balance_pays_usd_bill_at_quoted_rate(acme: Api, running: Running) -> None:
    bill = await us_bill(acme)
    quote = await quote_for(acme, bill)
    assert quote["to_amount"] == bill["amount_due"]
    rate, mid = Decimal(quote["rate"]), Decimal(quote["mid_rate"])
    assert rate == (mid * (1 - Decimal(quote["spread"]))).quantize(Decimal("1e-10"), rounding="ROUND_FLOOR")
    # The payer pays enough for the amount due at the customer rate, and not a fen more.
    assert (
        Decimal(quote["from_amount"] - 1) * rate < bill["amount_due"] <= Decimal(quote["from_amount"]) * rate
    )
    assert quote["fee"] > 0 and not quote["used"]

    account = await balance_account(acme, quote["from_amount"] + 500)
    paid = await acme.post(
        "/v1/payments", pay_bill(bill, quote, {"type": "balance", "balance": {"account": account}})
    )
    assert paid.status == 200, paid.body
    payment = paid.body
    assert (payment["status"], payment["bill_posting"]["status"]) == ("succeeded", "posted")
    assert payment["fx"]["quote"] == quote["id"]
    assert (payment["fx"]["to_amount"], payment["fx"]["to_currency"]) == (bill["amount_due"], "USD")
    # The biller's own books: the posting is in USD, the amount due.
    postings = [p for p in running.utility.postings.values() if p.account == US_ACCOUNT]
    assert [p.amount for p in postings] == [bill["amount_due"]]
    balance = await acme.get(f"/v1/accounts/{account}")
    assert balance.body["balance"]["available"] == 500
    # Each currency balances on its own: CNY from the payer into FX and fees, USD from FX to the biller.
    assert await account_sums(running, "sys_acme_fx_%") == {
        "sys_acme_fx_default_CNY": quote["from_amount"] - quote["fee"],
        "sys_acme_fx_default_USD": -bill["amount_due"],
    }
    assert await account_sums(running, "sys_acme_fees_%") == {"sys_acme_fees_fx_spread_CNY": quote["fee"]}
    assert await account_sums(running, "sys_acme_biller_payable_bil_us_power_%") == {
        "sys_acme_biller_payable_bil_us_power_USD": bill["amount_due"]
    }
    assert (await acme.get(f"/v1/fx/quotes/{quote['id']}")).body["used"] is True
    await ledger_is_consistent(running.gw)


async def test_cny_card_pays_usd_bill(acme: Api, running: Running) -> None:
    bill = await us_bill(acme, "0041230001")
    quote = await quote_for(acme, bill)
    method = card_payment()["payment_method"]
    paid = await acme.post("/v1/payments", pay_bill(bill, quote, method, "0041230001"))
    assert paid.status == 200, paid.body
    assert (paid.body["status"], paid.body["amount_captured"]) == ("succeeded", quote["from_amount"])
    assert paid.body["bill_posting"]["status"] == "posted"
    receivable = await account_sums(running, "sys_acme_connector_receivable_%")
    assert sum(receivable.values()) == -quote["from_amount"]
    await ledger_is_consistent(running.gw)


async def test_biller_rejection_gives_back_everything_spread_included(acme: Api, running: Running) -> None:
    bill = await us_bill(acme, "0041239999")  # ending 9999: the biller rejects the posting
    quote = await quote_for(acme, bill)
    account = await balance_account(acme, quote["from_amount"])
    paid = await acme.post(
        "/v1/payments",
        pay_bill(bill, quote, {"type": "balance", "balance": {"account": account}}, "0041239999"),
    )
    assert paid.status == 200, paid.body
    assert (paid.body["status"], paid.body["failure"]["code"]) == ("failed", "biller_rejected")
    balance = await acme.get(f"/v1/accounts/{account}")
    assert balance.body["balance"]["available"] == quote["from_amount"]
    assert set((await account_sums(running, "sys_acme_fx_%")).values()) == {0}
    assert set((await account_sums(running, "sys_acme_fees_%")).values()) == {0}
    await ledger_is_consistent(running.gw)


async def test_reused_foreign_expired_and_mismatched_quotes_are_refused(
    acme: Api, globex: Api, running: Running
) -> None:
    bill = await us_bill(acme)
    card = card_payment()["payment_method"]

    quote = await quote_for(acme, bill)
    first = await acme.post("/v1/payments", pay_bill(bill, quote, card))
    assert first.body["status"] == "succeeded", first.body
    reused = await acme.post("/v1/payments", pay_bill(bill, quote, card))
    assert (reused.status, reused.body["error"]["code"], reused.body["error"]["param"]) == (
        400,
        "quote_used",
        "fx_quote",
    )

    fresh = await quote_for(acme, bill)
    foreign = await globex.post("/v1/payments", pay_bill(bill, fresh, card))
    assert (foreign.status, foreign.body["error"]["param"]) == (400, "fx_quote")
    assert (await globex.get(f"/v1/fx/quotes/{fresh['id']}")).status == 404

    wrong_amount = await acme.post(
        "/v1/payments", pay_bill(bill, fresh, card) | {"amount": fresh["from_amount"] + 1}
    )
    assert (wrong_amount.status, wrong_amount.body["error"]["param"]) == (400, "amount")
    no_bill = {k: v for k, v in pay_bill(bill, fresh, card).items() if k != "bill"}
    assert (await acme.post("/v1/payments", no_bill)).body["error"]["param"] == "fx_quote"

    async with running.gw.api[DB_POOL].acquire() as conn:
        await conn.execute(
            "UPDATE fx_quotes SET expires_at = now() - interval '1 second' WHERE id = $1", fresh["id"]
        )
    expired = await acme.post("/v1/payments", pay_bill(bill, fresh, card))
    assert (expired.status, expired.body["error"]["code"]) == (400, "quote_expired")
    # None of the refusals moved money or used a quote.
    async with running.gw.api[DB_POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payments") == 1
        assert await conn.fetchval("SELECT used_key FROM fx_quotes WHERE id = $1", fresh["id"]) is None


async def test_same_key_retry_keeps_its_quote(acme: Api, running: Running) -> None:
    bill = await us_bill(acme)
    quote = await quote_for(acme, bill)
    body = pay_bill(bill, quote, card_payment()["payment_method"])
    first = await acme.post("/v1/payments", body, key="fx-retry-1")
    again = await acme.post("/v1/payments", body, key="fx-retry-1")
    assert first.status == again.status == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert first.body["id"] == again.body["id"]


async def test_quotes_refused_when_rates_are_stale(acme: Api, feed: FxSandbox) -> None:
    feed.freeze(age_seconds=3600)  # the feed now publishes hour-old rates: the connector refuses them
    deadline = time.monotonic() + 10
    while True:
        quoted = await acme.post(
            "/v1/fx/quotes", {"from_currency": "CNY", "to_currency": "USD", "to_amount": 1000}, key=None
        )
        if quoted.status == 503:
            break
        assert time.monotonic() < deadline, "rates never went stale"
        await asyncio.sleep(0.2)
    assert quoted.body["error"]["code"] == "rates_stale"
    assert quoted.headers.get("Retry-After")
    assert (await acme.get("/v1/fx/rates")).status == 503
    feed.freeze()
    deadline = time.monotonic() + 10
    while (await acme.get("/v1/fx/rates")).status != 200:
        assert time.monotonic() < deadline, "rates did not recover"
        await asyncio.sleep(0.2)


async def test_quote_input_is_checked(acme: Api) -> None:
    both = await acme.post(
        "/v1/fx/quotes",
        {"from_currency": "CNY", "to_currency": "USD", "to_amount": 1, "from_amount": 1},
        key=None,
    )
    assert (both.status, both.body["error"]["param"]) == (400, "to_amount")
    same = await acme.post(
        "/v1/fx/quotes", {"from_currency": "USD", "to_currency": "usd", "to_amount": 100}, key=None
    )
    assert (same.status, same.body["error"]["param"]) == (400, "to_currency")
    unknown = await acme.post(
        "/v1/fx/quotes", {"from_currency": "CNY", "to_currency": "XAU", "to_amount": 100}, key=None
    )
    assert (unknown.status, unknown.body["error"]["param"]) == (400, "to_currency")
    jpy = await acme.post(
        "/v1/fx/quotes", {"from_currency": "USD", "to_currency": "JPY", "from_amount": 1000}, key=None
    )
    assert jpy.status == 200, jpy.body
    assert 1400 < jpy.body["to_amount"] < 1600  # 10.00 USD ≈ 1,510 yen less the spread; JPY has no minor unit
