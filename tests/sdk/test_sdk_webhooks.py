"""``payhub_client.webhooks.verify``: good, tampered, expired, malformed and rotated signatures."""

from __future__ import annotations

import time

import pytest
from payhub_client import webhooks

OLD, NEW, OTHER = "whsec_old_secret", "whsec_new_secret", "whsec_someone_else"
BODY = (
    b'{"id":"evt_1","type":"payment.succeeded","data":{"object":{"id":"pay_1","amount":100}},'
    b'"created":"2026-06-01T08:00:00Z","object":"event"}'
)


def test_a_good_signature_verifies_and_decodes_the_event() -> None:
    event = webhooks.verify(BODY, webhooks.sign(BODY, OLD), OLD)
    assert (event.id, event.type, event.data_object["id"]) == ("evt_1", "payment.succeeded", "pay_1")
    assert event.created.year == 2026


@pytest.mark.parametrize(
    ("body", "header_secret", "secrets"),
    [
        (BODY + b" ", OLD, OLD),  # body changed after signing
        (BODY, OTHER, OLD),  # signed with another secret
        (BODY, OLD, [NEW, OTHER]),  # none of the receiver's secrets
    ],
)
def test_a_bad_signature_is_refused(body: bytes, header_secret: str, secrets: str | list[str]) -> None:
    with pytest.raises(webhooks.SignatureVerificationError) as refused:
        webhooks.verify(body, webhooks.sign(BODY, header_secret), secrets)
    assert refused.value.reason == "mismatch"


@pytest.mark.parametrize("offset", [-301, 301])
def test_an_old_or_future_timestamp_is_refused(offset: int) -> None:
    header = webhooks.sign(BODY, OLD, timestamp=int(time.time()) + offset)
    with pytest.raises(webhooks.SignatureVerificationError) as refused:
        webhooks.verify(BODY, header, OLD)
    assert refused.value.reason == "expired"
    assert webhooks.verify(BODY, header, OLD, tolerance=400).id == "evt_1"


@pytest.mark.parametrize(
    "header",
    ["", "v1=abc", "t=12x,v1=abc", "t=1,t=2,v1=abc", f"t={int(time.time())}", "t=²,v1=ab"],
)
def test_a_malformed_header_is_refused(header: str) -> None:
    with pytest.raises(webhooks.SignatureVerificationError) as refused:
        webhooks.verify(BODY, header, OLD)
    assert refused.value.reason == "malformed"


def test_rotation_two_signatures_and_two_secrets() -> None:
    # During a rotation the hub signs with both secrets, the new one first.
    header = webhooks.sign(BODY, [NEW, OLD])
    assert header.count("v1=") == 2
    for secrets in (OLD, NEW, [OLD], [OTHER, NEW], (NEW, OLD)):
        assert webhooks.verify(BODY, header, secrets).id == "evt_1"
    # After the overlap only the new secret signs: a receiver holding both still accepts.
    assert webhooks.verify(BODY, webhooks.sign(BODY, NEW), [OLD, NEW]).id == "evt_1"
    with pytest.raises(webhooks.SignatureVerificationError):
        webhooks.verify(BODY, webhooks.sign(BODY, NEW), [OLD])


def test_a_signed_payload_that_is_not_an_event() -> None:
    with pytest.raises(webhooks.SignatureVerificationError) as refused:
        webhooks.verify(b"[]", webhooks.sign(b"[]", OLD), OLD)
    assert refused.value.reason == "payload"


def test_no_secret_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        webhooks.verify(BODY, webhooks.sign(BODY, OLD), [])
