"""Step-up secrets (DESIGN §9): one-time codes kept only as a keyed HMAC, and the message a
device signs with its Ed25519 key. Pure, no I/O except :func:`load_otp_key`.

Why an HMAC under a key outside the database: a 6-digit code has a million values, so a plain or
salted hash in a leaked table is reversed in a second; without the key it cannot be.
A device signs ``payhub-stepup-v1|<payment id>|<amount>|<currency>|<nonce>``: the nonce makes each
challenge's signature new (no replay) and the payment, amount and currency bind it to what the
customer is agreeing to (a signature for another payment or amount fails).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from crypto.keyring import load_key_file

OTP_KEY_FILE = "otp_hmac.key"
OTP_DIGITS = 6
NONCE_BYTES = 32


def load_otp_key(keys_dir: Path) -> bytes:
    """``keys_dir/otp_hmac.key``: 32 random bytes (mode 0600), created on first use."""
    return load_key_file(keys_dir / OTP_KEY_FILE, "OTP key")


def new_otp() -> str:
    return f"{secrets.randbelow(10**OTP_DIGITS):0{OTP_DIGITS}d}"


def otp_digest(key: bytes, challenge_id: str, code: str) -> bytes:
    """Bound to its challenge: the same code in another challenge has another digest."""
    return hmac.new(key, f"{challenge_id}|{code}".encode(), hashlib.sha256).digest()


def otp_matches(key: bytes, challenge_id: str, code: str, digest: bytes) -> bool:
    return hmac.compare_digest(otp_digest(key, challenge_id, code), digest)


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def device_message(payment_id: str, amount: int, currency: str, nonce: bytes) -> bytes:
    return f"payhub-stepup-v1|{payment_id}|{amount}|{currency}|{nonce.hex()}".encode()


def signature_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def public_key_valid(public_key: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        return False
    return True
