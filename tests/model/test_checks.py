"""The checker's own checks, on planted discrepancies (no processes): each invariant sees what it must."""

from __future__ import annotations

from typing import Any

from connectors.iso8583_card.transformers import rrn_for
from tests.model import checks
from tests.model.harness import History

CLEARING = "sys_acme_tenant_clearing_default_CNY"
CARD_RECEIVABLE = "sys_acme_connector_receivable_iso8583_card_CNY"
POWER_PAYABLE = "sys_acme_biller_payable_bil_cn_power_CNY"


def payment(pid: str, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": pid,
        "tenant": "acme",
        "status": "succeeded",
        "amount": 1000,
        "currency": "CNY",
        "amount_authorized": 1000,
        "amount_captured": 1000,
        "amount_refunded": 0,
        "method": "card",
        "payment_method": {"type": "card"},
        "capture_method": "automatic",
        "connector": "iso8583_card",
        "connector_reference": None,
        "biller": None,
        "bill_posting": None,
        "bill": None,
        "destination_account": None,
        "failure_code": None,
    }
    row.update(fields)
    return row


def attempt(
    aid: str, pid: str, operation: str = "authorize", connector: str = "iso8583_card"
) -> dict[str, Any]:
    return {
        "id": aid,
        "payment_id": pid,
        "operation": operation,
        "connector": connector,
        "amount": 1000,
        "status": "succeeded",
        "refund_id": None,
        "next_check": None,
    }


def account(aid: str, kind: str, reference: str | None = None, available: int = 0) -> dict[str, Any]:
    return {
        "id": aid,
        "kind": kind,
        "currency": "CNY",
        "reference": reference,
        "available": available,
        "pending": 0,
    }


def charge(attempt_id: str, charged: int) -> dict[str, Any]:
    return {
        "rrn": rrn_for(attempt_id),
        "kind": "purchase",
        "currency": "CNY",
        "charged": charged,
        "status": "captured",
    }


def hub(
    payments: list[dict[str, Any]], attempts: list[dict[str, Any]], entries: dict[tuple[str, str], int]
) -> checks.Hub:
    accounts = {
        CLEARING: account(CLEARING, "tenant_clearing", "default"),
        CARD_RECEIVABLE: account(CARD_RECEIVABLE, "connector_receivable", "iso8583_card"),
        POWER_PAYABLE: account(POWER_PAYABLE, "biller_payable", "bil_cn_power"),
    }
    for (account_id, _bucket), total in entries.items():
        if account_id.startswith("acct_") and account_id not in accounts:
            accounts[account_id] = account(account_id, "customer_balance", available=total)
    return checks.Hub({p["id"]: p for p in payments}, attempts, [], accounts, entries, [])


def books(charges: list[dict[str, Any]], postings: list[dict[str, Any]] | None = None) -> checks.Books:
    return checks.Books.of({"acquirer": {"charges": charges}, "utility": {"postings": postings or []}})


def found(h: checks.Hub, b: checks.Books) -> list[checks.Violation]:
    return checks.check(h, b, History())


def test_a_consistent_card_payment_passes() -> None:
    h = hub(
        [payment("pay_1")],
        [attempt("att_1", "pay_1")],
        {(CARD_RECEIVABLE, "available"): -1000, (CLEARING, "available"): 1000},
    )
    assert found(h, books([charge("att_1", 1000)])) == []


def test_a_processor_charging_more_than_the_hub_knows_is_money_lost() -> None:
    h = hub(
        [payment("pay_1")],
        [attempt("att_1", "pay_1")],
        {(CARD_RECEIVABLE, "available"): -1000, (CLEARING, "available"): 1000},
    )
    violations = found(h, books([charge("att_1", 1000), charge("att_orphan", 500)]))
    assert {v.invariant for v in violations} == {4, 6}
    figures = checks.Figures.of(History(), violations, crashes=0, steps=0)
    assert figures.money_lost == 500 + 500  # the unknown charge (4), and per currency (6)


def test_a_refunded_top_up_whose_balance_kept_the_money_is_money_created() -> None:
    topup = payment("pay_t", destination_account="acct_1", amount_refunded=1000)
    entries = {
        (CARD_RECEIVABLE, "available"): -1000 + 1000,
        ("acct_1", "available"): 1000,
        (CLEARING, "available"): -1000,
    }
    violations = found(hub([topup], [attempt("att_t", "pay_t")], entries), books([charge("att_t", 0)]))
    assert {v.invariant for v in violations} == {3}  # the clearing paid the refund: balanced, yet wrong
    assert violations[0].objects[0] == "acct_1"


def test_a_posted_bill_missing_from_the_payable_is_reported_per_biller() -> None:
    bill = payment("pay_b", biller="bil_cn_power", bill_posting={"status": "posted"})
    attempts = [attempt("att_b", "pay_b"), attempt("att_p", "pay_b", "post_bill", "bil_cn_power")]
    entries = {(CARD_RECEIVABLE, "available"): -1000, (CLEARING, "available"): 1000}  # booked to the tenant
    posting = {
        "reference": "att_p",
        "biller": "bil_cn_power",
        "currency": "CNY",
        "posted": 1000,
        "status": "posted",
    }
    violations = found(hub([bill], attempts, entries), books([charge("att_b", 1000)], [posting]))
    assert [v.invariant for v in violations] == [5]
    assert "payable" in violations[0].objects[0]


def test_unbalanced_transactions_and_unfinished_payments_are_named() -> None:
    stuck = payment("pay_s", status="processing", amount_captured=0, amount_authorized=0)
    h = hub([stuck], [attempt("att_s", "pay_s")], {})
    h.unbalanced.append(
        {"transaction_id": "ltx_1", "currency": "CNY", "total": 5, "kind": "collect", "payment_id": "pay_s"}
    )
    violations = found(h, books([charge("att_s", 0)]))
    assert {(v.invariant, v.objects[0]) for v in violations} == {(1, "pay_s"), (2, "ltx_1")}
    assert checks.Figures.of(History(), violations, crashes=0, steps=0).stuck == 1


FX = {
    "quote": "fxq_1",
    "from_amount": 1000,
    "from_currency": "CNY",
    "to_amount": 140,
    "to_currency": "USD",
    "fee": 6,
}
US_PAYABLE = "sys_acme_biller_payable_bil_us_power_USD"
FX_CNY, FX_USD, SPREAD = "sys_acme_fx_default_CNY", "sys_acme_fx_default_USD", "sys_acme_fees_fx_spread_CNY"


def fx_hub(payments: list[dict[str, Any]], entries: dict[tuple[str, str], int]) -> checks.Hub:
    h = hub(payments, [a for p in payments for a in fx_attempts(p["id"])], entries)
    h.accounts[US_PAYABLE] = account(US_PAYABLE, "biller_payable", "bil_us_power") | {"currency": "USD"}
    h.accounts[FX_CNY] = account(FX_CNY, "fx", "default")
    h.accounts[FX_USD] = account(FX_USD, "fx", "default") | {"currency": "USD"}
    h.accounts[SPREAD] = account(SPREAD, "fees", "fx_spread")
    return h


def fx_attempts(pid: str) -> list[dict[str, Any]]:
    return [attempt(f"att_{pid}", pid), attempt(f"att_p{pid}", pid, "post_bill", "bil_us_power")]


def fx_posting(pid: str) -> dict[str, Any]:
    return {
        "reference": f"att_p{pid}",
        "biller": "bil_us_power",
        "currency": "USD",
        "posted": 140,
        "status": "posted",
    }


def fx_bill(pid: str, quote: str = "fxq_1") -> dict[str, Any]:
    return payment(
        pid, biller="bil_us_power", bill_posting={"status": "posted"}, bill={"fx": FX | {"quote": quote}}
    )


FX_ENTRIES = {
    (CARD_RECEIVABLE, "available"): -1000,
    (FX_CNY, "available"): 994,
    (SPREAD, "available"): 6,
    (FX_USD, "available"): -140,
    (US_PAYABLE, "available"): 140,
}


def test_an_fx_bill_paid_at_its_quote_passes_and_a_short_fx_position_is_money_lost() -> None:
    ok = fx_hub([fx_bill("pay_f")], FX_ENTRIES)
    assert found(ok, books([charge("att_pay_f", 1000)], [fx_posting("pay_f")])) == []
    short = fx_hub([fx_bill("pay_f")], FX_ENTRIES | {(FX_CNY, "available"): 990, (CLEARING, "available"): 4})
    violations = found(short, books([charge("att_pay_f", 1000)], [fx_posting("pay_f")]))
    assert [(v.invariant, v.objects[0]) for v in violations] == [(8, "fx:CNY")]


def test_one_quote_paying_two_payments_is_a_duplicate() -> None:
    entries = {key: 2 * total for key, total in FX_ENTRIES.items()}
    h = fx_hub([fx_bill("pay_f"), fx_bill("pay_g")], entries)
    b = books(
        [charge("att_pay_f", 1000), charge("att_pay_g", 1000)], [fx_posting("pay_f"), fx_posting("pay_g")]
    )
    violations = found(h, b)
    assert [(v.invariant, v.duplicates) for v in violations] == [(8, 1)]


def test_webhooks_lost_stuck_duplicated_or_unconfirmed_are_reported() -> None:
    from datetime import UTC, datetime

    from tests.model.receiver import Receipt

    at = datetime(2026, 1, 1, tzinfo=UTC)
    h = hub([], [], {})
    h.endpoints = [
        {"id": "we_1", "tenant": "acme", "enabled_events": ["*"], "status": "enabled", "created": at}
    ]
    h.events = [
        {"id": f"evt_{n}", "tenant": "acme", "type": "payment.succeeded", "created": at} for n in range(4)
    ]
    h.deliveries = [
        {"id": "d0", "event_id": "evt_0", "endpoint_id": "we_1", "status": "delivered", "attempts": 1},
        {"id": "d1", "event_id": "evt_1", "endpoint_id": "we_1", "status": "pending", "attempts": 3},
        {"id": "d2", "event_id": "evt_2", "endpoint_id": "we_1", "status": "delivered", "attempts": 2},
    ]  # evt_3 has no delivery at all
    b = books([])
    b.webhooks = [
        Receipt("evt_0", "payment.succeeded", "d0", 1, True, 200, 0.0),
        Receipt("evt_0", "payment.succeeded", "d0", 1, True, 200, 0.0),  # the same attempt twice
        Receipt("evt_2", "payment.succeeded", "d2", 1, True, 500, 0.0),  # never a 2xx, yet "delivered"
    ]
    violations = [v for v in found(h, b) if v.invariant == 9]
    assert sorted(v.objects[0] for v in violations) == ["d0", "evt_1", "evt_2", "evt_3"]
    assert sum(v.duplicates for v in violations) == 1
