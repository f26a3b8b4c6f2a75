"""PAN sealing: round trip, tamper and context-swap detection, fingerprints, token ids."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.keyring import Keyring, KeyringError, generate_data_key
from crypto.vault import (
    SealedPan,
    VaultError,
    fingerprint,
    new_token_id,
    open_pan,
    pan_aad,
    seal_pan,
)

PAN_KEY = generate_data_key(1, "pan")
FP_KEY = generate_data_key(2, "fingerprint")
KEYRING = Keyring([PAN_KEY, FP_KEY])
PAN = "4111111111111111"

tenants = st.text(st.characters(exclude_characters=":", exclude_categories=["Cs"]), min_size=1, max_size=40)
token_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=40)
pans = st.text(alphabet="0123456789", min_size=12, max_size=19)


@given(tenant=tenants, token_id=token_ids, pan=pans)
def test_round_trip(tenant: str, token_id: str, pan: str) -> None:
    sealed = seal_pan(KEYRING, tenant=tenant, token_id=token_id, pan=pan)
    assert sealed.kid == 1
    assert len(sealed.nonce) == 12
    assert len(sealed.ciphertext) == len(pan) + 16
    assert pan.encode() not in sealed.ciphertext
    assert open_pan(KEYRING, sealed, tenant=tenant, token_id=token_id) == pan


@given(pan=pans, data=st.data())
def test_tampering_any_byte_fails(pan: str, data: st.DataObject) -> None:
    sealed = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=pan)
    field = data.draw(st.sampled_from(["nonce", "ciphertext"]))
    value = bytearray(getattr(sealed, field))
    index = data.draw(st.integers(0, len(value) - 1))
    value[index] ^= data.draw(st.integers(1, 255))
    if field == "nonce":
        tampered = SealedPan(sealed.kid, bytes(value), sealed.ciphertext)
    else:
        tampered = SealedPan(sealed.kid, sealed.nonce, bytes(value))
    with pytest.raises(VaultError) as info:
        open_pan(KEYRING, tampered, tenant="acme", token_id="tok_a")
    assert pan not in str(info.value)


@given(tenant=tenants, token_id=token_ids, other_tenant=tenants, other_token=token_ids)
def test_other_tenant_or_token_fails(tenant: str, token_id: str, other_tenant: str, other_token: str) -> None:
    sealed = seal_pan(KEYRING, tenant=tenant, token_id=token_id, pan=PAN)
    if other_tenant != tenant:
        with pytest.raises(VaultError):
            open_pan(KEYRING, sealed, tenant=other_tenant, token_id=token_id)
    if other_token != token_id:
        with pytest.raises(VaultError):
            open_pan(KEYRING, sealed, tenant=tenant, token_id=other_token)


def test_truncated_or_short_nonce_fails() -> None:
    sealed = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=PAN)
    with pytest.raises(VaultError):
        open_pan(KEYRING, SealedPan(1, sealed.nonce[:11], sealed.ciphertext), tenant="acme", token_id="tok_a")
    with pytest.raises(VaultError):
        open_pan(KEYRING, SealedPan(1, sealed.nonce, sealed.ciphertext[:-1]), tenant="acme", token_id="tok_a")


def test_aad_is_unambiguous() -> None:
    assert pan_aad("acme", "tok_x") == b"payhub-pan:v1:acme:tok_x"
    with pytest.raises(VaultError):
        seal_pan(KEYRING, tenant="ac:me", token_id="tok_x", pan=PAN)
    with pytest.raises(VaultError):
        seal_pan(KEYRING, tenant="", token_id="tok_x", pan=PAN)
    with pytest.raises(VaultError):
        seal_pan(KEYRING, tenant="acme", token_id="", pan=PAN)


def test_only_digit_pans_are_sealed() -> None:
    for bad in ("4111", "41111111111111111111", "4111x11111111111"):
        with pytest.raises(VaultError) as info:
            seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=bad)
        assert bad not in str(info.value)
    sealed = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan="4111 1111-1111 1111")
    assert open_pan(KEYRING, sealed, tenant="acme", token_id="tok_a") == PAN


def test_fresh_nonce_per_seal() -> None:
    one = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=PAN)
    two = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=PAN)
    assert one.nonce != two.nonce
    assert one.ciphertext != two.ciphertext


def test_new_key_version_seals_and_old_one_still_opens() -> None:
    old = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=PAN)
    rotated = Keyring([PAN_KEY, FP_KEY, generate_data_key(3, "pan")])
    new = seal_pan(rotated, tenant="acme", token_id="tok_b", pan=PAN)
    assert (old.kid, new.kid) == (1, 3)
    assert open_pan(rotated, old, tenant="acme", token_id="tok_a") == PAN
    assert open_pan(rotated, new, tenant="acme", token_id="tok_b") == PAN
    with pytest.raises(KeyringError, match="unknown data key kid 3"):
        open_pan(KEYRING, new, tenant="acme", token_id="tok_b")  # a stale keyring: caller refreshes


def test_the_fingerprint_key_cannot_decrypt() -> None:
    sealed = seal_pan(KEYRING, tenant="acme", token_id="tok_a", pan=PAN)
    with pytest.raises(KeyringError, match="not a pan key"):
        open_pan(KEYRING, SealedPan(2, sealed.nonce, sealed.ciphertext), tenant="acme", token_id="tok_a")
    only_fp = Keyring([FP_KEY])
    with pytest.raises(KeyringError, match="no pan data key"):
        seal_pan(only_fp, tenant="acme", token_id="tok_a", pan=PAN)


@given(pan=pans)
def test_fingerprint_is_a_deterministic_keyed_hmac(pan: str) -> None:
    kid, fp = fingerprint(KEYRING, pan)
    assert kid == 2
    assert fp == fingerprint(KEYRING, pan)[1]
    assert fp == hmac.new(FP_KEY.key, pan.encode(), hashlib.sha256).digest()
    assert fp != hashlib.sha256(pan.encode()).digest()
    spaced = " ".join(pan[i : i + 4] for i in range(0, len(pan), 4))
    assert fingerprint(KEYRING, spaced) == (kid, fp)
    other = Keyring([PAN_KEY, generate_data_key(2, "fingerprint")])
    assert fingerprint(other, pan)[1] != fp


def test_fingerprint_under_a_chosen_or_newer_key() -> None:
    newer = Keyring([PAN_KEY, FP_KEY, generate_data_key(3, "fingerprint")])
    assert fingerprint(newer, PAN)[0] == 3
    assert fingerprint(newer, PAN, kid=2) == fingerprint(KEYRING, PAN)
    with pytest.raises(KeyringError):
        fingerprint(newer, PAN, kid=1)  # a pan key is not a fingerprint key
    assert fingerprint(KEYRING, "4111111111111111")[1] != fingerprint(KEYRING, "5555555555554444")[1]


def test_token_ids() -> None:
    ids = {new_token_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"tok_[A-Za-z0-9]{24}", token) for token in ids)
