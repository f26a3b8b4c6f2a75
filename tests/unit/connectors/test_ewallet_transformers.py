"""E-wallet transformers: status map, next actions and notify signature handling (pure)."""

from __future__ import annotations

import msgspec
import pytest

from connectors.base import InvalidParams, Outcome, PaymentRequest, SignatureError
from connectors.ewallet import transformers as wire
from crypto.signatures import sign_webhook

SECRET = "whsec_test_wallet"
NOTICE = {"order_id": "ord_1", "reference": "att_1", "status": "paid", "amount": 990, "currency": "CNY"}


def request(provider: str = "alipay") -> PaymentRequest:
    return PaymentRequest(
        attempt_id="att_1",
        payment_id="pay_1",
        tenant="acme",
        amount=990,
        currency="CNY",
        method="wallet",
        details={"provider": provider},
    )


def signed(payload: dict[str, object], secret: str = SECRET) -> tuple[dict[str, str], bytes]:
    body = msgspec.json.encode(payload)
    return {wire.SIGNATURE_HEADER: sign_webhook(body, [secret])}, body


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        ("unpaid", Outcome.REQUIRES_ACTION),
        ("paid", Outcome.SUCCEEDED),
        ("closed", Outcome.FAILED),
        ("refunding", Outcome.PENDING),
    ],
)
def test_status_map_defaults_to_pending(status: str, outcome: Outcome) -> None:
    assert wire.outcome_of(status) is outcome


def test_order_request_and_provider_check() -> None:
    body = wire.order_request(request("paypal"), "https://gw/cb")
    assert (body.reference, body.provider, body.notify_url) == ("att_1", "paypal", "https://gw/cb")
    with pytest.raises(InvalidParams):
        wire.order_request(request("bitcoin"), "https://gw/cb")


def test_next_actions() -> None:
    qr = wire.order_result(wire.OrderReply("ord_1", "att_1", "unpaid", qr_code="https://w/qr/1"))
    assert (qr.outcome, qr.reference, qr.next_action) == (
        Outcome.REQUIRES_ACTION,
        "ord_1",
        {"type": "qr_code", "data": "https://w/qr/1"},
    )
    redirect = wire.order_result(wire.OrderReply("ord_2", "att_2", "unpaid", redirect_url="https://w/r/2"))
    assert redirect.next_action == {"type": "redirect", "url": "https://w/r/2"}
    closed = wire.order_result(wire.OrderReply("ord_3", "att_3", "closed"))
    assert (closed.outcome, closed.decline_code) == (Outcome.FAILED, "wallet_order_closed")


def test_a_signed_paid_notify_settles_its_attempt() -> None:
    notice = wire.parse_notice(*signed(NOTICE), [SECRET])
    assert notice.attempt_id == "att_1"
    assert (notice.result.outcome, notice.result.reference) == (Outcome.SUCCEEDED, "ord_1")


def test_an_unpaid_notify_says_nothing_new() -> None:
    notice = wire.parse_notice(*signed({**NOTICE, "status": "unpaid"}), [SECRET])
    assert notice.result.outcome is Outcome.PENDING


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, msgspec.json.encode(NOTICE)),
        signed(NOTICE, "whsec_other"),
        ({wire.SIGNATURE_HEADER: signed(NOTICE)[0][wire.SIGNATURE_HEADER]}, b'{"forged": true}'),
    ],
    ids=["missing", "wrong-secret", "tampered"],
)
def test_bad_signatures(headers: dict[str, str], body: bytes) -> None:
    with pytest.raises(SignatureError):
        wire.parse_notice(headers, body, [SECRET])
