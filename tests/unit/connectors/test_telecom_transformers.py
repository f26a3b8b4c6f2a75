"""connectors.telecom_topup.transformers: phone numbers, denominations, status map, signatures, report."""

from __future__ import annotations

import json
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import (
    AmountNotAllowed,
    BillPosting,
    DuplicateReference,
    InvalidParams,
    Outcome,
    SignatureError,
)
from connectors.telecom_topup import transformers as wire


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+8613800138000", "+8613800138000"),
        ("+86 138 0013 8000", "+8613800138000"),
        ("+86-138-0013-8000", "+8613800138000"),
        ("+8618612345678", "+8618612345678"),
    ],
)
def test_msisdns_are_normalised_to_e164(raw: str, e164: str) -> None:
    assert wire.normalise_msisdn(raw, country="CN") == e164


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("13800138000", "international"),  # no +country code
        ("8613800138000", "international"),
        ("+86138001", "not a valid phone number"),
        ("+861380013800099", "not a valid phone number"),
        ("phone", "international"),
        ("+14155552671", "must be a CN number"),
        ("+861062345678", "must be a mobile number"),  # a Beijing landline
    ],
)
def test_bad_msisdns_say_what_is_wrong_without_echoing_the_number(raw: str, why: str) -> None:
    with pytest.raises(InvalidParams, match=why) as caught:
        wire.normalise_msisdn(raw, country="CN")
    digits = "".join(c for c in raw if c.isdigit())
    assert len(digits) < 6 or digits not in str(caught.value)


def test_msisdn_param_is_required() -> None:
    with pytest.raises(InvalidParams, match=r"customer_params\.msisdn"):
        wire.msisdn_of(wire.BILLER, {})


def test_denominations_fixed_and_range() -> None:
    fixed = wire.Denominations(fixed=(1000, 3000, 5000, 10000))
    assert [fixed.allows(a) for a in (1000, 3000, 2500, 0, 20000)] == [True, True, False, False, False]
    ranged = wire.Denominations(minimum=1000, maximum=50000, step=100)
    assert [ranged.allows(a) for a in (1000, 1100, 1150, 50000, 50100, 900)] == [
        True, True, False, True, False, False,
    ]  # fmt: skip
    wire.check_amount(fixed, 5000, "CNY")
    with pytest.raises(AmountNotAllowed, match="one of 1000, 3000, 5000, 10000"):
        wire.check_amount(fixed, 2500, "CNY")
    with pytest.raises(AmountNotAllowed, match="between 1000 and 50000 in steps of 100"):
        wire.check_amount(ranged, 1150, "CNY")


def lookup_body(denominations: object, msisdn: str = "+8613800138000") -> bytes:
    return json.dumps(
        {
            "msisdn": msisdn,
            "operator": "CMCC",
            "operator_name": "China Mobile",
            "denominations": denominations,
        }
    ).encode()


def test_operator_lookup_answers() -> None:
    fixed = wire.operator_from_lookup(
        lookup_body({"type": "fixed", "values": [3000, 1000, 1000]}), "+8613800138000"
    )
    assert fixed.denominations.fixed == (1000, 3000)
    ranged = wire.operator_from_lookup(
        lookup_body({"type": "range", "min": 1000, "max": 2000, "step": 500}), "+8613800138000"
    )
    assert ranged.denominations.allows(1500)
    for bad in (
        lookup_body({"type": "fixed", "values": []}),
        lookup_body({"type": "fixed", "values": [0]}),
        lookup_body({"type": "range", "min": 2000, "max": 1000}),
        lookup_body({"type": "range", "min": 1000, "max": 2000, "step": 0}),
        lookup_body({"type": "menu"}),
        lookup_body({"type": "fixed", "values": [1000]}, msisdn="+8613900000000"),  # another number
        b"not json",
    ):
        with pytest.raises(wire.MalformedAnswer):
            wire.operator_from_lookup(bad, "+8613800138000")


def test_status_map() -> None:
    assert wire.posting_for_status("COMPLETED", "OP1") == BillPosting(Outcome.SUCCEEDED, "OP1", None)
    for pending in ("CREATED", "CONFIRMED", "SUBMITTED"):
        assert wire.posting_for_status(pending).outcome is Outcome.PENDING
    for failed in ("REJECTED", "DECLINED", "CANCELLED", "REVERSED"):
        assert wire.posting_for_status(failed).outcome is Outcome.FAILED


@given(st.text(max_size=20).filter(lambda s: s not in wire.STATUS_MAP))
def test_any_unknown_status_is_pending(status: str) -> None:
    assert wire.posting_for_status(status).outcome is Outcome.PENDING


def test_topup_answers_and_refusals() -> None:
    body = json.dumps({"reference": "att_1", "status": "SUBMITTED", "operator_reference": "CMCC1"}).encode()
    assert wire.posting_from_topup(body, "att_1").outcome is Outcome.PENDING
    with pytest.raises(wire.MalformedAnswer):
        wire.posting_from_topup(body, "att_2")
    assert isinstance(wire.topup_refusal("amount_not_allowed", "m"), AmountNotAllowed)
    assert isinstance(wire.topup_refusal("duplicate_reference", "m"), DuplicateReference)
    assert isinstance(wire.topup_refusal("signature_invalid", "m"), SignatureError)
    no_operator = wire.topup_refusal("operator_not_found", "m")
    assert isinstance(no_operator, InvalidParams)
    assert "no mobile operator" in str(no_operator)
    assert (
        wire.topup_refusal("try_later", "m") is None
    )  # not known to be a refusal: the caller keeps it pending
    assert wire.topup_body("att_1", "+8613800138000", 1000, "CNY") == (
        b'{"reference":"att_1","msisdn":"+8613800138000","amount":1000,"currency":"CNY"}'
    )


def test_hmac_signatures() -> None:
    secret = b"s3cret"
    body = b'{"reference":"att_1"}'
    signature = wire.sign(secret, body)
    assert len(signature) == 64
    wire.verify(secret, body, signature)
    wire.verify(secret, body, f" {signature}\t")
    for bad in (None, "", "0" * 64, signature.upper(), wire.sign(b"other", body), "é" * 64):
        with pytest.raises(SignatureError):
            wire.verify(secret, body, bad)
    with pytest.raises(SignatureError):
        wire.verify(secret, body + b" ", signature)


def test_report_parsing() -> None:
    day = date(2025, 6, 1)
    items = [
        {
            "reference": "att_1",
            "msisdn": "+8613800138000",
            "amount": 1000,
            "currency": "CNY",
            "status": "COMPLETED",
        },
        {
            "reference": "att_2",
            "msisdn": "+8613800138001",
            "amount": 3000,
            "currency": "CNY",
            "status": "REJECTED",
        },
    ]
    good = {"date": "2025-06-01", "count": 2, "total": 1000, "items": items}
    lines = wire.settlement_from_report(json.dumps(good).encode(), day)
    assert [(line.serial, line.account, line.status) for line in lines] == [
        ("att_1", "+8613800138000", "COMPLETED"),
        ("att_2", "+8613800138001", "REJECTED"),
    ]
    for bad in ({**good, "count": 3}, {**good, "total": 4000}, {**good, "date": "2025-06-02"}, {"date": "x"}):
        with pytest.raises(wire.MalformedAnswer):
            wire.settlement_from_report(json.dumps(bad).encode(), day)
