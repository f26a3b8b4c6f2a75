"""Bank transfer transformers: status map, wire conversion and callback signature handling (pure)."""

from __future__ import annotations

import time

import msgspec
import pytest

from connectors.bank_transfer import transformers as wire
from connectors.base import InvalidParams, Outcome, PaymentRequest, SignatureError
from crypto.signatures import sign_webhook

SECRET = "whsec_test_bank"


def request(account: str = "6222000011112222", **extra: object) -> PaymentRequest:
    fields: dict[str, object] = {
        "attempt_id": "att_1",
        "payment_id": "pay_1",
        "tenant": "acme",
        "amount": 4200,
        "currency": "CNY",
        "method": "bank_transfer",
        "details": {"account_number": account},
    }
    fields.update(extra)
    return PaymentRequest(**fields)  # type: ignore[arg-type]


def signed(payload: dict[str, str], secret: str = SECRET, **kwargs: int) -> tuple[dict[str, str], bytes]:
    body = msgspec.json.encode(payload)
    return {wire.SIGNATURE_HEADER: sign_webhook(body, [secret], **kwargs)}, body


NOTICE = {"reference": "att_1", "status": "settled", "transfer_id": "trf_9"}


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("pending", Outcome.PENDING),
        ("settled", Outcome.SUCCEEDED),
        ("rejected", Outcome.FAILED),
        ("on_hold", Outcome.PENDING),  # unknown statuses never settle anything
        ("", Outcome.PENDING),
    ],
)
def test_status_map_defaults_to_pending(status: str, outcome: Outcome) -> None:
    assert wire.outcome_of(status) is outcome


def test_transfer_request_uses_the_attempt_id_as_reference() -> None:
    body = wire.transfer_request(request(), "https://gw/cb")
    assert msgspec.to_builtins(body) == {
        "reference": "att_1",
        "account_number": "6222000011112222",
        "amount": 4200,
        "currency": "CNY",
        "callback_url": "https://gw/cb",
    }


@pytest.mark.parametrize("account", ["", "12", "6222-0000", "1" * 35])
def test_transfer_request_refuses_bad_account_numbers(account: str) -> None:
    with pytest.raises(InvalidParams):
        wire.transfer_request(request(account), "https://gw/cb")


def test_results() -> None:
    pending = wire.transfer_result(wire.TransferReply("trf_1", "att_1", "pending"))
    assert (pending.outcome, pending.reference) == (Outcome.PENDING, "trf_1")
    rejected = wire.transfer_result(wire.TransferReply("trf_2", "att_2", "rejected", "account_rejected"))
    assert (rejected.outcome, rejected.decline_code, rejected.raw_code) == (
        Outcome.FAILED,
        "bank_rejected",
        "account_rejected",
    )
    assert wire.never_received().decline_code == "connector_unavailable"
    refund = wire.refund_result(wire.RefundReply("rfd_1", "succeeded"))
    assert (refund.outcome, refund.reference) == (Outcome.SUCCEEDED, "rfd_1")
    assert wire.refund_refused("transfer_not_settled").outcome is Outcome.FAILED


def test_a_signed_notice_settles_its_attempt() -> None:
    headers, body = signed(NOTICE)
    notice = wire.parse_notice(headers, body, [SECRET])
    assert notice.attempt_id == "att_1"
    assert (notice.result.outcome, notice.result.reference) == (Outcome.SUCCEEDED, "trf_9")


def test_header_lookup_is_case_insensitive_and_rotation_is_accepted() -> None:
    headers, body = signed(NOTICE, "whsec_old")
    lowered = {k.lower(): v for k, v in headers.items()}
    assert wire.parse_notice(lowered, body, [SECRET, "whsec_old"]).attempt_id == "att_1"


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b.replace(b"settled", b"rejected")), id="body-changed"),
        pytest.param(lambda h, b: (h, b + b" "), id="body-extended"),
        pytest.param(lambda h, b: ({}, b), id="header-missing"),
        pytest.param(lambda h, b: ({wire.SIGNATURE_HEADER: "garbage"}, b), id="header-garbled"),
        pytest.param(
            lambda h, b: ({wire.SIGNATURE_HEADER: sign_webhook(b, ["whsec_wrong"])}, b), id="wrong-secret"
        ),
        pytest.param(
            lambda h, b: ({wire.SIGNATURE_HEADER: sign_webhook(b, [SECRET], timestamp=1)}, b), id="replayed"
        ),
        pytest.param(
            lambda h, b: ({"Payhub-Signature": h[wire.SIGNATURE_HEADER]}, b), id="other-header-name"
        ),
    ],
)
def test_anything_but_a_valid_fresh_signature_is_a_signature_error(tamper) -> None:  # type: ignore[no-untyped-def]
    headers, body = tamper(*signed(NOTICE))
    with pytest.raises(SignatureError):
        wire.parse_notice(headers, body, [SECRET])


def test_authentic_but_unreadable_notice_is_invalid_not_acted_upon() -> None:
    body = b'{"reference": "att_1"}'
    headers = {wire.SIGNATURE_HEADER: sign_webhook(body, [SECRET])}
    with pytest.raises(InvalidParams):
        wire.parse_notice(headers, body, [SECRET])


def test_signature_clock_tolerance() -> None:
    headers, body = signed(NOTICE, timestamp=int(time.time()) - 200)
    assert wire.parse_notice(headers, body, [SECRET]).attempt_id == "att_1"
