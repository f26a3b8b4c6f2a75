from __future__ import annotations

from datetime import date

from connectors.base import SettlementLine
from gateway.services.recon import classify

DAY = date(2026, 11, 30)


def line(serial: str, amount: int, status: str = "success") -> SettlementLine:
    return SettlementLine(DAY, serial, "0031234567", amount, status)


def test_every_class_of_difference() -> None:
    hub = {
        "att_ok": {"payment_id": "pay_1", "amount": 100, "status": "succeeded"},
        "att_amount": {"payment_id": "pay_2", "amount": 200, "status": "succeeded"},
        "att_status": {"payment_id": "pay_3", "amount": 300, "status": "failed"},
        "att_only_hub": {"payment_id": "pay_4", "amount": 400, "status": "succeeded"},
        "att_failed_not_in_file": {"payment_id": "pay_5", "amount": 500, "status": "failed"},
    }
    lines = [
        line("att_ok", 100),
        line("att_amount", 250),
        line("att_status", 300),
        line("att_only_biller", 600),
    ]
    result = classify(lines, hub, "bil_cn_power", DAY)
    assert (result.matched, result.mismatched, result.missing_at_hub, result.missing_at_biller) == (
        1,
        2,
        1,
        1,
    )
    kinds = {item["serial"]: item["kind"] for item in result.items}
    assert kinds == {
        "att_amount": "amount_mismatch",
        "att_status": "status_mismatch",
        "att_only_biller": "missing_at_hub",
        "att_only_hub": "missing_at_biller",
    }
    assert "matched 1, mismatched 2, missing at hub 1, missing at biller 1" in result.line()
