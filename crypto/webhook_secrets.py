"""Webhook signing secrets: generation and sealing at rest (pure; storage is ``gateway.store.webhooks``).

DESIGN §7: no secret in an unencrypted column. A signing secret is sealed with AES-256-GCM under
the keyring's current ``secret`` data key; the associated data binds the ciphertext to its tenant
and endpoint id, so a sealed secret copied onto another endpoint (or another tenant's) does not
open. Nonces are random 96-bit values (one seal per secret; a key rotation starts a fresh key).

Secrets look like ``whsec_`` + 43 URL-safe base64 characters (256 random bits).

    Exception
     └── SecretError      a sealed secret does not open (wrong tenant/endpoint, tampered); the
                          message never contains the secret
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag

from crypto.keyring import NONCE_BYTES, Keyring

__all__ = [
    "SECRET_PREFIX",
    "SealedSecret",
    "SecretError",
    "new_webhook_secret",
    "open_secret",
    "seal_secret",
    "secret_aad",
]

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_RANDOM_BYTES = 32


class SecretError(Exception):
    """A sealed secret cannot be opened. Messages never contain the secret."""


@dataclass(frozen=True, slots=True)
class SealedSecret:
    kid: int
    nonce: bytes
    ciphertext: bytes = field(repr=False)  # includes the 16-byte GCM tag


def new_webhook_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_RANDOM_BYTES)


def secret_aad(tenant: str, endpoint_id: str) -> bytes:
    """``payhub-whsec:v1:<tenant>:<endpoint>``; a tenant contains no ':' so the split is unambiguous."""
    if not tenant or ":" in tenant:
        raise SecretError("tenant must be non-empty and contain no ':'")
    if not endpoint_id:
        raise SecretError("endpoint id must be non-empty")
    return b"payhub-whsec:v1:" + tenant.encode() + b":" + endpoint_id.encode()


def seal_secret(keyring: Keyring, *, tenant: str, endpoint_id: str, secret: str) -> SealedSecret:
    """Encrypt ``secret`` for ``tenant``'s endpoint ``endpoint_id`` under the current secret key."""
    key = keyring.current("secret")
    nonce = os.urandom(NONCE_BYTES)
    aad = secret_aad(tenant, endpoint_id)
    return SealedSecret(key.kid, nonce, keyring.aead(key.kid, "secret").encrypt(nonce, secret.encode(), aad))


def open_secret(keyring: Keyring, sealed: SealedSecret, *, tenant: str, endpoint_id: str) -> str:
    """Decrypt a sealed secret; SecretError when tenant, endpoint, nonce or ciphertext do not match.

    An unknown ``sealed.kid`` raises KeyringError (the caller may refresh its keyring and retry).
    """
    cipher = keyring.aead(sealed.kid, "secret")
    if len(sealed.nonce) != NONCE_BYTES:
        raise SecretError("sealed secret has a malformed nonce")
    try:
        plaintext = cipher.decrypt(sealed.nonce, sealed.ciphertext, secret_aad(tenant, endpoint_id))
    except InvalidTag:
        raise SecretError(
            f"sealed secret does not open for endpoint {endpoint_id} of tenant {tenant} (kid {sealed.kid})"
        ) from None
    return plaintext.decode()
