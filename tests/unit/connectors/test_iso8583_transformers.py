"""ISO 8583 transformers: messages survive the wire, codes mean what the table says, RRNs are stable."""

from __future__ import annotations

import string
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.base import CardData, InvalidParams, Outcome, PaymentRequest
from connectors.iso8583_card import transformers as wire

NOW = datetime(2026, 6, 1, 9, 30, 15, tzinfo=UTC)
TERMINAL = wire.Terminal("TERM0001", "acme")


def request(capture: bool = True, **changes: Any) -> PaymentRequest:
    fields: dict[str, object] = {
        "attempt_id": "att_1",
        "payment_id": "pay_1",
        "tenant": "acme",
        "amount": 12850,
        "currency": "CNY",
        "method": "card",
        "capture": capture,
        "card": CardData("4111111111111111", 7, 2031, "123"),
    }
    fields.update(changes)
    return PaymentRequest(**fields)  # type: ignore[arg-type]  # a table of test variations


def round_trip(message: wire.Message) -> wire.Message:
    framed = wire.pack(dict(message))
    assert wire.frame_length(framed[:2]) == len(framed) - 2
    decoded = wire.unpack(framed[2:])
    decoded.pop("p")
    decoded.pop("1", None)
    return decoded


def test_purchase_round_trips_with_every_field() -> None:
    message = wire.authorization(request(), stan="000042", now=NOW, terminal_id="TERM0001")
    assert round_trip(message) == message
    assert message["t"] == "0200"
    assert message["2"] == "4111111111111111"
    assert message["3"] == "000000"
    assert message["4"] == "000000012850"
    assert (message["7"], message["12"], message["13"]) == ("0601093015", "093015", "0601")
    assert message["14"] == "3107"
    assert message["37"] == wire.rrn_for("att_1")
    assert message["41"] == "TERM0001"
    assert message["42"] == "acme".ljust(15)
    assert message["49"] == "156"
    assert message["126"] == "123"


def test_manual_capture_is_an_authorization_and_cvv_is_optional() -> None:
    message = wire.authorization(
        request(capture=False, card=CardData("5555555555554444", 1, 2030)),
        stan="000001",
        now=NOW,
        terminal_id="T",
    )
    assert message["t"] == "0100"
    assert "126" not in message
    assert round_trip(message) == message


def test_network_messages() -> None:
    sign_on = wire.network(wire.SIGN_ON, stan="000001", now=NOW)
    echo = wire.network(wire.ECHO, stan="000002", now=NOW)
    assert (sign_on["t"], sign_on["70"], echo["70"]) == ("0800", "001", "301")
    assert round_trip(echo) == echo


def test_capture_advice_names_the_authorization_and_carries_no_card_data() -> None:
    message = wire.capture_advice(
        attempt_id="att_cap",
        authorization_rrn="AUTHRRN00001",
        amount=6000,
        currency="USD",
        stan="000003",
        now=NOW,
        terminal=TERMINAL,
        approval_code="A1B2C3",
    )
    assert message["t"] == "0220"
    assert message["37"] == wire.rrn_for("att_cap")
    assert message["38"] == "A1B2C3"
    assert wire.Original.decode(message["90"]).rrn == "AUTHRRN00001"
    assert not {"2", "14", "126"} & message.keys()
    assert round_trip(message) == message


def test_reversal_of_an_unanswered_request_keeps_its_original_data_elements() -> None:
    original = wire.authorization(request(), stan="000077", now=NOW, terminal_id="T")
    reversal = wire.reversal_of(original, stan="000078", now=NOW)
    assert reversal["t"] == "0400"
    assert (reversal["37"], reversal["4"], reversal["49"]) == (original["37"], original["4"], "156")
    data = wire.Original.decode(reversal["90"])
    assert (data.mti, data.stan, data.transmitted, data.rrn) == (
        "0200",
        "000077",
        "0601093015",
        original["37"],
    )
    assert not {"2", "14", "126"} & reversal.keys()
    assert wire.reversal_of(original, stan="000079", now=NOW, repeat=True)["t"] == "0401"
    assert round_trip(reversal) == reversal


def test_refund_is_a_0200_with_processing_code_20_and_its_own_rrn() -> None:
    message = wire.refund(
        attempt_id="att_ref",
        payment_rrn="PAYRRN000001",
        amount=2500,
        currency="JPY",
        stan="000004",
        now=NOW,
        terminal=TERMINAL,
    )
    assert (message["t"], message["3"], message["49"]) == ("0200", "200000", "392")
    assert message["37"] == wire.rrn_for("att_ref") != "PAYRRN000001"
    assert wire.Original.decode(message["90"]).rrn == "PAYRRN000001"
    assert "126" not in message
    assert round_trip(message) == message


@pytest.mark.parametrize(
    ("operation", "mti", "processing"),
    [("authorize", "0100", "000000"), ("capture", "0220", "000000"), ("refund", "0200", "200000")],
)
def test_inquiry_needs_only_the_attempt_id(operation: str, mti: str, processing: str) -> None:
    message = wire.inquiry(attempt_id="att_9", operation=operation, stan="000005", now=NOW, terminal=TERMINAL)
    assert (message["t"], message["3"], message["37"]) == (mti, processing, wire.rrn_for("att_9"))
    assert wire.is_inquiry(message)
    assert "2" not in message
    assert round_trip(message) == message


def test_unknown_inquiry_operation_is_refused() -> None:
    with pytest.raises(InvalidParams):
        wire.inquiry(attempt_id="a", operation="settle", stan="000001", now=NOW, terminal=TERMINAL)


@pytest.mark.parametrize(
    "changes",
    [
        {"card": CardData("4111", 12, 2030)},
        {"card": CardData("4111-1111-1111-1111", 12, 2030)},
        {"card": CardData("4111111111111111", 13, 2030)},
        {"card": CardData("4111111111111111", 12, 2030, "12")},
        {"card": None},
        {"amount": 0},
        {"amount": 10**12},
        {"currency": "XTS"},
    ],
)
def test_bad_requests_are_refused_before_anything_is_sent(changes: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        wire.authorization(request(**changes), stan="000001", now=NOW, terminal_id="T")


@pytest.mark.parametrize(
    ("alpha", "numeric"),
    [
        ("CNY", "156"),
        ("USD", "840"),
        ("EUR", "978"),
        ("JPY", "392"),
        ("GBP", "826"),
        ("HKD", "344"),
        ("KWD", "414"),
        ("cny", "156"),
    ],
)
def test_currency_table(alpha: str, numeric: str) -> None:
    assert wire.currency_numeric(alpha) == numeric
    assert wire.CURRENCY_ALPHA[numeric] == alpha.upper()


def test_currency_table_is_one_to_one_and_numeric() -> None:
    assert len(set(wire.CURRENCY_NUMERIC.values())) == len(wire.CURRENCY_NUMERIC)
    assert all(len(n) == 3 and n.isdigit() for n in wire.CURRENCY_NUMERIC.values())
    with pytest.raises(InvalidParams):
        wire.currency_numeric("ABC")


def test_rrn_is_deterministic_and_twelve_base36_characters() -> None:
    assert wire.rrn_for("att_1") == wire.rrn_for("att_1")
    assert wire.rrn_for("att_1") != wire.rrn_for("att_2")


@given(st.text(min_size=1, max_size=80))
def test_rrn_shape(attempt_id: str) -> None:
    rrn = wire.rrn_for(attempt_id)
    assert len(rrn) == 12
    assert set(rrn) <= set(string.digits + string.ascii_uppercase)


def test_rrns_of_many_attempts_do_not_collide() -> None:
    rrns = {wire.rrn_for(f"att_{i}") for i in range(20000)}
    assert len(rrns) == 20000


def test_long_tenant_ids_get_a_stable_15_character_merchant_id() -> None:
    long_id = "a-very-long-tenant-name"
    assert len(wire.merchant_id(long_id)) == 15
    assert wire.merchant_id(long_id) == wire.merchant_id(long_id) != wire.merchant_id(long_id + "x")


@pytest.mark.parametrize(
    ("code", "outcome", "decline_code"),
    [
        ("00", Outcome.SUCCEEDED, None),
        ("05", Outcome.FAILED, "do_not_honor"),
        ("14", Outcome.FAILED, "card_declined"),
        ("51", Outcome.FAILED, "insufficient_funds"),
        ("54", Outcome.FAILED, "expired_card"),
        ("N7", Outcome.FAILED, "incorrect_cvc"),
        ("82", Outcome.FAILED, "incorrect_cvc"),
        ("91", Outcome.FAILED, "connector_unavailable"),
        ("25", Outcome.FAILED, "connector_unavailable"),
        # Never guessed: an unmapped code leaves the payment pending, the raw code kept.
        ("96", Outcome.PENDING, None),
        ("Q1", Outcome.PENDING, None),
        ("", Outcome.PENDING, None),
    ],
)
def test_response_code_map(code: str, outcome: Outcome, decline_code: str | None) -> None:
    response = {"t": "0110", "4": "000000001000", "37": "RRN000000001", "39": code}
    result = wire.result("authorize", response)
    assert (result.outcome, result.decline_code, result.raw_code) == (outcome, decline_code, code)
    assert result.reference == "RRN000000001"


def test_approved_amounts_depend_on_the_message() -> None:
    authorized = wire.result("authorize", {"t": "0110", "4": "000000001000", "39": "00"})
    purchased = wire.result("authorize", {"t": "0210", "4": "000000001000", "39": "00"})
    captured = wire.result("capture", {"t": "0230", "4": "000000000600", "39": "00"})
    assert (authorized.amount_authorized, authorized.amount_captured) == (1000, 0)
    assert (purchased.amount_authorized, purchased.amount_captured) == (1000, 1000)
    assert captured.amount_captured == 600


def test_an_inquiry_about_a_reversed_transaction_is_a_failure_that_moved_no_money() -> None:
    response = {"t": "0210", "4": "000000001000", "39": "00", "48": wire.REVERSED_FLAG}
    result = wire.result("authorize", response)
    assert (result.outcome, result.decline_code) == (Outcome.FAILED, "connector_unavailable")


def test_garbage_is_a_wire_error() -> None:
    with pytest.raises(wire.WireError):
        wire.unpack(b"0200zz")
    with pytest.raises(wire.WireError):
        wire.pack({"t": "0200", "4": "1" * 13})
    with pytest.raises(wire.WireError):
        wire.Original.decode("0100")
