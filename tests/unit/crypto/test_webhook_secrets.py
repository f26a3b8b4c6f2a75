"""Webhook signing secrets sealed at rest: round trip, AAD binding, purpose check, no leaks."""

from __future__ import annotations

import re

import pytest

from crypto.keyring import Keyring, KeyringError, generate_data_key
from crypto.webhook_secrets import (
    SECRET_PREFIX,
    SealedSecret,
    SecretError,
    new_webhook_secret,
    open_secret,
    seal_secret,
    secret_aad,
)

RING = Keyring(
    [generate_data_key(1, "pan"), generate_data_key(2, "fingerprint"), generate_data_key(3, "secret")]
)


def test_secrets_are_random_and_well_formed() -> None:
    secrets = {new_webhook_secret() for _ in range(100)}
    assert len(secrets) == 100
    for secret in secrets:
        assert re.fullmatch(SECRET_PREFIX + r"[A-Za-z0-9_-]{43}", secret)


def test_round_trip_under_the_current_secret_key() -> None:
    secret = new_webhook_secret()
    sealed = seal_secret(RING, tenant="acme", endpoint_id="we_1", secret=secret)
    assert sealed.kid == 3
    assert secret.encode() not in sealed.ciphertext
    assert secret not in repr(sealed)
    assert open_secret(RING, sealed, tenant="acme", endpoint_id="we_1") == secret


@pytest.mark.parametrize(("tenant", "endpoint"), [("globex", "we_1"), ("acme", "we_2")])
def test_a_sealed_secret_opens_only_for_its_tenant_and_endpoint(tenant: str, endpoint: str) -> None:
    secret = new_webhook_secret()
    sealed = seal_secret(RING, tenant="acme", endpoint_id="we_1", secret=secret)
    with pytest.raises(SecretError) as caught:
        open_secret(RING, sealed, tenant=tenant, endpoint_id=endpoint)
    assert secret not in str(caught.value)


def test_tampering_is_detected() -> None:
    sealed = seal_secret(RING, tenant="acme", endpoint_id="we_1", secret=new_webhook_secret())
    flipped = SealedSecret(
        sealed.kid, sealed.nonce, bytes([sealed.ciphertext[0] ^ 1]) + sealed.ciphertext[1:]
    )
    with pytest.raises(SecretError):
        open_secret(RING, flipped, tenant="acme", endpoint_id="we_1")
    with pytest.raises(SecretError, match="nonce"):
        open_secret(
            RING, SealedSecret(sealed.kid, b"short", sealed.ciphertext), tenant="acme", endpoint_id="we_1"
        )


def test_only_secret_keys_seal_and_open_secrets() -> None:
    sealed = seal_secret(RING, tenant="acme", endpoint_id="we_1", secret=new_webhook_secret())
    with pytest.raises(KeyringError, match="not a secret key"):
        open_secret(RING, SealedSecret(1, sealed.nonce, sealed.ciphertext), tenant="acme", endpoint_id="we_1")
    with pytest.raises(KeyringError, match="no secret data key"):
        seal_secret(Keyring([generate_data_key(1, "pan")]), tenant="acme", endpoint_id="we_1", secret="x")


def test_aad_refuses_ambiguous_parts() -> None:
    assert secret_aad("acme", "we_1") == b"payhub-whsec:v1:acme:we_1"
    with pytest.raises(SecretError):
        secret_aad("ac:me", "we_1")
    with pytest.raises(SecretError):
        secret_aad("acme", "")
