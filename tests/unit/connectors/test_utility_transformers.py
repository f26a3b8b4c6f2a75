"""connectors.utility_biller.transformers: signing, answer checks, code and status maps, recon file."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import (
    AmountNotAllowed,
    BillPayment,
    DuplicateReference,
    InvalidParams,
    NoDues,
    Outcome,
    ServiceWindowClosed,
    SettlementLine,
    SignatureError,
)
from connectors.utility_biller import transformers as wire
from crypto.signatures import canonical_params, rsa_verify_params

MERCHANT = "payhub_dev"
DAY = date(2025, 6, 1)


@pytest.fixture(scope="module")
def hub_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def biller_key() -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed_answer(key: RSAPrivateKey, **fields: str) -> bytes:
    signed = wire.sign_params(fields, key, merchant_id=MERCHANT, timestamp="2025-06-01T08:00:00Z")
    return json.dumps(signed).encode()


# ---- envelope -----------------------------------------------------------------------------------


def test_requests_are_signed_over_the_sorted_canonical_form(hub_key: RSAPrivateKey) -> None:
    spec = wire.spec_for("bil_cn_power")
    signed = wire.sign_params(
        wire.query_params(spec, "0031234567"), hub_key, merchant_id=MERCHANT, timestamp="2025-06-01T08:00:00Z"
    )
    assert signed["sign_type"] == "RSA2"
    assert canonical_params(signed) == (
        b"account_number=0031234567&biller=CN_POWER&merchant_id=payhub_dev&timestamp=2025-06-01T08:00:00Z"
    )
    rsa_verify_params(signed, signed["sign"], hub_key.public_key())  # standard RSA2, any peer can check it


def test_wire_timestamp_is_rfc3339_utc() -> None:
    beijing = datetime(2025, 6, 1, 16, 0, tzinfo=UTC) + timedelta(hours=0)
    assert wire.wire_timestamp(beijing) == "2025-06-01T16:00:00Z"


def test_answers_are_believed_only_when_signed_by_the_biller(
    hub_key: RSAPrivateKey, biller_key: RSAPrivateKey
) -> None:
    public = biller_key.public_key()
    body = signed_answer(biller_key, code="SUCCESS", reference="att_1", status="SUCCESS")
    assert wire.open_answer(body, public, merchant_id=MERCHANT)["status"] == "SUCCESS"

    altered = json.loads(body)
    altered["status"] = "FAILED"
    with pytest.raises(SignatureError):
        wire.open_answer(json.dumps(altered).encode(), public, merchant_id=MERCHANT)
    with pytest.raises(SignatureError):  # signed, but by someone else
        wire.open_answer(signed_answer(hub_key, code="SUCCESS"), public, merchant_id=MERCHANT)
    unsigned = {k: v for k, v in json.loads(body).items() if k != "sign"}
    with pytest.raises(SignatureError):
        wire.open_answer(json.dumps(unsigned).encode(), public, merchant_id=MERCHANT)
    with pytest.raises(SignatureError):
        wire.open_answer(
            json.dumps({**json.loads(body), "sign_type": "RSA"}).encode(), public, merchant_id=MERCHANT
        )
    with pytest.raises(wire.MalformedAnswer):
        wire.open_answer(b"<html>busy</html>", public, merchant_id=MERCHANT)
    with pytest.raises(wire.MalformedAnswer):
        wire.open_answer(b'{"code": 1}', public, merchant_id=MERCHANT)
    with pytest.raises(wire.MalformedAnswer):
        wire.open_answer(body, public, merchant_id="someone_else")


# ---- query --------------------------------------------------------------------------------------


def query_answer(**overrides: str) -> dict[str, str]:
    answer = {
        "code": "SUCCESS",
        "biller": "CN_POWER",
        "account_number": "0031234567",
        "bill_ref": "CN_POWER-202506-0031234567",
        "amount_due": "12850",
        "currency": "CNY",
        "due_date": "2025-06-11",
        "customer_name": "Li Lei",
    }
    return answer | overrides


def test_query_answer_becomes_a_bill_with_a_masked_name() -> None:
    spec = wire.spec_for("bil_cn_power")
    [bill] = wire.bills_from_query(query_answer(), spec, "0031234567")
    assert (bill.amount_due, bill.currency, bill.due_date, bill.customer_name) == (
        12850, "CNY", date(2025, 6, 11), "L* L*",
    )  # fmt: skip
    with pytest.raises(NoDues):
        wire.bills_from_query(query_answer(code="QUERY_NO_DUES"), spec, "0031234567")
    with pytest.raises(InvalidParams):
        wire.bills_from_query(query_answer(code="QUERY_ACCOUNT_INVALID"), spec, "0031234567")
    with pytest.raises(SignatureError):
        wire.bills_from_query(query_answer(code="SYS_SIGN_INVALID"), spec, "0031234567")
    for broken in (
        query_answer(amount_due="0"),
        query_answer(amount_due="12.50"),
        query_answer(currency="USD"),
        query_answer(due_date="soon"),
        query_answer(account_number="0031234568"),  # an answer about another account
        query_answer(code="QUERY_SOMETHING_NEW"),
    ):
        with pytest.raises(wire.MalformedAnswer):
            wire.bills_from_query(broken, spec, "0031234567")


@pytest.mark.parametrize(
    ("name", "masked"),
    [("Li Lei", "L* L*"), ("Han Meimei", "H* M*"), ("张伟", "张*"), ("  John   Smith ", "J* S*"), ("", "")],
)
def test_mask_name(name: str, masked: str) -> None:
    assert wire.mask_name(name) == masked


# ---- pay, status, reversal ----------------------------------------------------------------------


def test_status_map_defaults_to_pending_never_failure() -> None:
    assert wire.posting_for_status("SUCCESS").outcome is Outcome.SUCCEEDED
    assert (wire.posting_for_status("FAILED").outcome, wire.posting_for_status("FAILED").code) == (
        Outcome.FAILED, "biller_rejected",
    )  # fmt: skip
    assert wire.posting_for_status("REVERSED").code == "reversed"
    assert wire.posting_for_status("PROCESSING").outcome is Outcome.PENDING
    assert wire.posting_for_status(None).outcome is Outcome.PENDING
    assert wire.posting_for_status("").outcome is Outcome.PENDING


@given(st.text(max_size=20).filter(lambda s: s not in wire.STATUS_MAP))
def test_any_unknown_status_is_pending(status: str) -> None:
    assert wire.posting_for_status(status).outcome is Outcome.PENDING


def pay_answer(code: str, **extra: str) -> dict[str, str]:
    return {"code": code, "msg": "m", "reference": "att_1", **extra}


def test_pay_codes() -> None:
    ok = wire.posting_from_pay(pay_answer("SUCCESS", status="SUCCESS", serial="S1"), "att_1")
    assert (ok.outcome, ok.biller_reference) == (Outcome.SUCCEEDED, "S1")
    rejected = wire.posting_from_pay(pay_answer("PAY_REJECTED", serial="S2"), "att_1")
    assert (rejected.outcome, rejected.code) == (Outcome.FAILED, "biller_rejected")
    for code, error in (
        ("PAY_NO_DUES", NoDues),
        ("PAY_AMOUNT_NOT_ALLOWED", AmountNotAllowed),
        ("PAY_DUPLICATE", DuplicateReference),
        ("PAY_SERVICE_WINDOW_CLOSED", ServiceWindowClosed),
        ("PAY_BILL_MISMATCH", InvalidParams),
        ("SYS_SIGN_INVALID", SignatureError),
        ("SYS_MERCHANT_INVALID", SignatureError),
    ):
        with pytest.raises(error):
            wire.posting_from_pay(pay_answer(code), "att_1")
    unknown = wire.posting_from_pay(pay_answer("SYS_BUSY"), "att_1")
    assert (unknown.outcome, unknown.code) == (Outcome.PENDING, "unknown_code:SYS_BUSY")
    with pytest.raises(wire.MalformedAnswer):  # an answer to another payment
        wire.posting_from_pay(pay_answer("SUCCESS", status="SUCCESS"), "att_2")


def test_status_and_reversal_answers() -> None:
    missing = wire.posting_from_status(pay_answer("STATUS_NOT_FOUND"), "att_1")
    assert (missing.outcome, missing.code) == (Outcome.PENDING, "reference_not_found")
    reversed_ = wire.posting_from_reverse(pay_answer("SUCCESS", status="REVERSED"), "att_1")
    assert (reversed_.outcome, reversed_.code) == (Outcome.FAILED, "reversed")
    refused = wire.posting_from_reverse(
        pay_answer("REVERSE_NOT_ALLOWED", status="SUCCESS", serial="S"), "att_1"
    )
    assert (refused.outcome, refused.code) == (Outcome.SUCCEEDED, "reversal_refused")
    nothing = wire.posting_from_reverse(pay_answer("REVERSE_NOT_ALLOWED", status="FAILED"), "att_1")
    assert (nothing.outcome, nothing.code) == (Outcome.FAILED, "biller_rejected")
    odd = wire.posting_from_reverse(pay_answer("REVERSE_LATER"), "att_1")
    assert odd.outcome is Outcome.PENDING  # retry the reversal with the same reference


def test_pay_params_are_checked_before_signing() -> None:
    def payment(**kwargs: object) -> BillPayment:
        fields: dict[str, object] = {
            "attempt_id": "att_1",
            "payment_id": "pay_1",
            "biller": "bil_cn_creditcard",
            "customer_params": {"account_number": "0031234567"},
            "amount": 100,
            "currency": "CNY",
        }
        return BillPayment(**(fields | kwargs))  # type: ignore[arg-type]

    spec = wire.spec_for("bil_cn_creditcard")
    assert wire.pay_params(spec, payment()) == {
        "biller": "CN_CREDITCARD",
        "account_number": "0031234567",
        "reference": "att_1",
        "amount": "100",
        "currency": "CNY",
    }
    with pytest.raises(AmountNotAllowed):
        wire.pay_params(spec, payment(amount=0))
    with pytest.raises(InvalidParams):
        wire.pay_params(spec, payment(currency="USD"))
    with pytest.raises(InvalidParams):  # "&" would otherwise forge a signed field
        wire.pay_params(spec, payment(customer_params={"account_number": "0031234567&amount=1"}))
    with pytest.raises(InvalidParams):
        wire.spec_for("bil_cn_mobile")


# ---- reconciliation file ------------------------------------------------------------------------

GOOD = "3|20000\n2025-06-01|att_1|0031234567|12000|SUCCESS\n2025-06-01|att_2|0031234568|5000|REVERSED\n" + (
    "2025-06-01|att_3|0031234569|8000|SUCCESS\n"
)


def test_recon_file_parses() -> None:
    lines = wire.parse_recon_file(GOOD, DAY)
    assert lines[0] == SettlementLine(DAY, "att_1", "0031234567", 12000, "SUCCESS")
    assert [line.status for line in lines] == ["SUCCESS", "REVERSED", "SUCCESS"]
    assert wire.parse_recon_file("0|0\n", DAY) == []
    assert wire.parse_recon_file(GOOD.replace("\n", "\r\n"), DAY) == lines


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("", "line 1"),
        ("3;20000\n", "line 1"),
        ("-1|0\n", "line 1"),
        ("2|20000\n2025-06-01|att_1|0031234567|12000|SUCCESS\n", "line 1"),  # count
        ("1|1\n2025-06-01|att_1|0031234567|12000|SUCCESS\n", "line 1"),  # total
        ("1|12000\n2025-06-01|att_1|0031234567|12000\n", "line 2"),  # 4 fields
        ("1|12000\n2025-06-01|att_1|0031234567|12000|SUCCESS|x\n", "line 2"),
        ("1|12000\n2025-13-01|att_1|0031234567|12000|SUCCESS\n", "line 2"),
        ("1|12000\n2025-06-02|att_1|0031234567|12000|SUCCESS\n", "line 2"),  # another day
        ("1|12000\n2025-06-01|att 1|0031234567|12000|SUCCESS\n", "line 2"),
        ("1|12000\n2025-06-01|att_1|00312345|12000|SUCCESS\n", "line 2"),
        ("1|12000\n2025-06-01|att_1|0031234567|120.00|SUCCESS\n", "line 2"),
        ("1|12000\n2025-06-01|att_1|0031234567|012000|SUCCESS\n", "line 2"),
        ("1|0\n2025-06-01|att_1|0031234567|0|SUCCESS\n", "line 2"),
        ("1|12000\n2025-06-01|att_1|0031234567|12000|success\n", "line 2"),
        (
            "2|24000\n2025-06-01|att_1|0031234567|12000|SUCCESS\n2025-06-01|att_1|0031234567|12000|SUCCESS\n",
            "line 3",
        ),
        ("1|12000\n\n2025-06-01|att_1|0031234567|12000|SUCCESS\n", "line 2"),  # a blank line inside
    ],
)
def test_malformed_recon_files_are_refused_naming_the_line(text: str, line: str) -> None:
    with pytest.raises(wire.MalformedReconFile, match=line):
        wire.parse_recon_file(text, DAY)


settlement_lines = st.lists(
    st.builds(
        SettlementLine,
        day=st.just(DAY),
        serial=st.from_regex(r"att_[A-Za-z0-9]{1,20}", fullmatch=True),
        account=st.from_regex(r"[0-9]{10}", fullmatch=True),
        amount=st.integers(min_value=1, max_value=10**12),
        status=st.sampled_from(sorted(wire.RECON_STATUSES)),
    ),
    max_size=20,
    unique_by=lambda line: line.serial,
)


@given(settlement_lines)
def test_render_then_parse_round_trips(lines: list[SettlementLine]) -> None:
    assert wire.parse_recon_file(wire.render_recon_file(lines), DAY) == lines
