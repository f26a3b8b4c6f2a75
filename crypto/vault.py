"""PAN sealing and fingerprints (pure; storage is ``gateway.store.vault``).

* :func:`seal_pan` encrypts a PAN with AES-256-GCM under the keyring's current ``pan`` key. The
  associated data binds the ciphertext to its tenant and token id, so a ciphertext copied to another
  token or tenant (or read through the wrong one) does not decrypt.
* :func:`fingerprint` is HMAC-SHA256 of the normalised PAN under the ``fingerprint`` key: the same
  card always gives the same fingerprint (de-duplication, velocity) but the fingerprint is useless
  without the key (a plain hash of a PAN is brute-forced in seconds: ~10^9 candidates per BIN).
* Nonces are random 96-bit values. Each PAN is sealed once per token, so with N tokens per key the
  nonce-collision probability is about N^2 / 2^97: negligible for billions of cards, and a rotation
  starts a fresh key anyway.

CVV has no place here: it is never sealed, stored or fingerprinted (DESIGN §7).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from crypto.base62 import ALPHABET, random_base62
from crypto.cards import PAN_MAX_DIGITS, PAN_MIN_DIGITS, normalize_pan
from crypto.keyring import NONCE_BYTES, Keyring

__all__ = [
    "TOKEN_ALPHABET",
    "TOKEN_PREFIX",
    "SealedPan",
    "VaultError",
    "fingerprint",
    "new_token_id",
    "open_pan",
    "pan_aad",
    "seal_pan",
]

TOKEN_PREFIX = "tok_"  # noqa: S105 - not a secret
TOKEN_ALPHABET = ALPHABET
TOKEN_RANDOM_CHARS = 24  # 24 * log2(62) ≈ 143 bits: unguessable, so a token id leaks nothing


class VaultError(Exception):
    """A PAN cannot be sealed or opened. Messages never contain the PAN."""


@dataclass(frozen=True, slots=True)
class SealedPan:
    kid: int
    nonce: bytes
    ciphertext: bytes  # includes the 16-byte GCM tag


def new_token_id() -> str:
    """``tok_`` and 24 uniform base62 characters (≈143 bits) from one CSPRNG call."""
    return TOKEN_PREFIX + random_base62(TOKEN_RANDOM_CHARS)


def pan_aad(tenant: str, token_id: str) -> bytes:
    """``payhub-pan:v1:<tenant>:<token_id>``; a tenant may not contain ':' so the split is unambiguous."""
    if not tenant or ":" in tenant:
        raise VaultError("tenant must be non-empty and contain no ':'")
    if not token_id:
        raise VaultError("token id must be non-empty")
    return b"payhub-pan:v1:" + tenant.encode() + b":" + token_id.encode()


def _digits(pan: str) -> bytes:
    digits = normalize_pan(pan)
    if not (PAN_MIN_DIGITS <= len(digits) <= PAN_MAX_DIGITS and digits.isascii() and digits.isdigit()):
        raise VaultError(f"a PAN is {PAN_MIN_DIGITS} to {PAN_MAX_DIGITS} ASCII digits")
    return digits.encode("ascii")


def seal_pan(keyring: Keyring, *, tenant: str, token_id: str, pan: str) -> SealedPan:
    """Encrypt ``pan`` (spaces/hyphens dropped) for ``tenant``'s token ``token_id``."""
    key = keyring.current("pan")
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = keyring.aead(key.kid).encrypt(nonce, _digits(pan), pan_aad(tenant, token_id))
    return SealedPan(key.kid, nonce, ciphertext)


def open_pan(keyring: Keyring, sealed: SealedPan, *, tenant: str, token_id: str) -> str:
    """Decrypt a sealed PAN; VaultError when tenant, token id, nonce or ciphertext do not match.

    An unknown ``sealed.kid`` raises KeyringError (the caller may refresh its keyring and retry).
    """
    cipher = keyring.aead(sealed.kid)
    if len(sealed.nonce) != NONCE_BYTES:
        raise VaultError("sealed PAN has a malformed nonce")
    try:
        plaintext = cipher.decrypt(sealed.nonce, sealed.ciphertext, pan_aad(tenant, token_id))
    except InvalidTag:
        raise VaultError(
            f"sealed PAN does not decrypt for token {token_id} of tenant {tenant} (kid {sealed.kid})"
        ) from None
    return plaintext.decode("ascii")


def fingerprint(keyring: Keyring, pan: str, *, kid: int | None = None) -> tuple[int, bytes]:
    """``(kid, HMAC-SHA256(fingerprint key, digits))`` under the current fingerprint key, or ``kid``'s."""
    key = keyring.current("fingerprint") if kid is None else keyring.get(kid, "fingerprint")
    return key.kid, hmac.digest(key.key, _digits(pan), "sha256")
