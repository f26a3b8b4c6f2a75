"""Passwords, TOTP, encrypted session cookies and CSRF tokens.

* Passwords: scrypt (memory-hard; n=2**15, r=8, p=1 uses 32 MiB), a 16-byte salt per user, compared in
  constant time. Stored as ``scrypt$n$r$p$salt$hash`` so the cost can be raised later.
* TOTP (RFC 6238, 30 s steps, 6 digits) with pyotp; one step of clock drift either way; a step is accepted
  once (no replay of a code seen over a shoulder).
* Sessions: the whole session is a Fernet token (AES-128-CBC + HMAC-SHA256, with a timestamp) in one
  cookie, so it can be neither read nor forged by the browser; expired after SESSION_TTL.
* CSRF: a random token per session, a hidden field in every form, compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from pathlib import Path
from typing import Any

import orjson
import pyotp
from cryptography.fernet import Fernet, InvalidToken

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SESSION_TTL = 12 * 3600


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=64 * 1024 * 1024, dklen=32
    )
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), salt.hex(), digest.hex()])


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    computed = hashlib.scrypt(
        password.encode(),
        salt=bytes.fromhex(salt),
        n=int(n),
        r=int(r),
        p=int(p),
        maxmem=64 * 1024 * 1024,
        dklen=len(digest) // 2,
    )
    return hmac.compare_digest(computed, bytes.fromhex(digest))


# A hash of a random password: sign-in for an unknown user costs the same time as for a known one.
DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, username: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name="payhub Bill Pay")


def totp_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step the code belongs to (current ±1), or None when it matches none."""
    code = code.strip().replace(" ", "")
    if not (len(code) == 6 and code.isdigit()):
        return None
    totp = pyotp.TOTP(secret)
    at = now if now is not None else time.time()
    for drift in (0, -1, 1):
        moment = at + drift * totp.interval
        if hmac.compare_digest(totp.at(moment), code):
            return int(moment // totp.interval)
    return None


class SessionCodec:
    """Encrypts the session dict into a cookie value and back."""

    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_file(cls, path: Path) -> SessionCodec:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(Fernet.generate_key())
            path.chmod(0o600)
        return cls(path.read_bytes().strip())

    def dumps(self, session: dict[str, Any]) -> str:
        return self._fernet.encrypt(orjson.dumps(session)).decode()

    def loads(self, value: str) -> dict[str, Any] | None:
        try:
            data = orjson.loads(self._fernet.decrypt(value.encode(), ttl=SESSION_TTL))
        except (InvalidToken, orjson.JSONDecodeError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def new_csrf_token() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("=")


def csrf_ok(expected: str | None, given: str | None) -> bool:
    return bool(expected) and bool(given) and hmac.compare_digest(str(expected), str(given))
