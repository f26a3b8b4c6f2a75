"""Verify the hub's signed webhook deliveries.

``Payhub-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`` where each ``v1`` is
``HMAC-SHA256(secret, "<t>.<raw body>")`` in lowercase hex. During a secret rotation the hub sends
two ``v1`` (the new secret's first); a receiver may also hold several secrets of its own (the old one
until the new one is deployed everywhere). A delivery is accepted when any ``v1`` matches any secret
and ``t`` is within ``tolerance`` seconds of now.

Check the **raw** body bytes, before any JSON parsing, then de-duplicate on the event ``id``.

Failure modes, all :class:`SignatureVerificationError` (``reason`` says which): ``malformed`` (no
single numeric ``t``, no ``v1``), ``expired`` (``t`` too old or too far ahead), ``mismatch`` (no
signature matches a secret), ``payload`` (signed, but not an event in JSON).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

import msgspec

from .models import Event

__all__ = ["DEFAULT_TOLERANCE", "HEADER", "SignatureVerificationError", "sign", "verify", "verify_signature"]

HEADER = "Payhub-Signature"
DEFAULT_TOLERANCE = 300


class SignatureVerificationError(Exception):
    """The delivery is not proven to come from the hub: answer 400 and do not act on it."""

    def __init__(self, message: str, *, reason: str, header: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.header = header


def _parse(header: str) -> tuple[int, list[str]]:
    items = [part.strip().split("=", 1) for part in header.split(",") if "=" in part]
    timestamps = [value for key, value in items if key == "t"]
    signatures = [value for key, value in items if key == "v1" and value]
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit():
        raise SignatureVerificationError("no single numeric t= in the signature header", reason="malformed")
    if not signatures:
        raise SignatureVerificationError("no v1= signature in the signature header", reason="malformed")
    return int(timestamps[0]), signatures


def _signature(secret: str, timestamp: int, payload: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


def verify_signature(
    payload: bytes,
    header: str,
    secrets: str | Sequence[str],
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> int:
    """Check the signature only; answer the signed timestamp. Raises SignatureVerificationError."""
    keys = [secrets] if isinstance(secrets, str) else [s for s in secrets if s]
    if not keys:
        raise ValueError("at least one webhook secret is needed")
    timestamp, signatures = _parse(header or "")
    current = time.time() if now is None else now
    if tolerance > 0 and abs(current - timestamp) > tolerance:
        raise SignatureVerificationError(
            f"signature timestamp is {int(current - timestamp)} s away from now (tolerance {tolerance} s)",
            reason="expired",
            header=header,
        )
    expected = [_signature(key, timestamp, payload) for key in keys]
    # Compare every pair (no early exit on the first match) so timing says nothing about which matched.
    matched = False
    for candidate in signatures:
        for wanted in expected:
            matched |= hmac.compare_digest(wanted, candidate)
    if not matched:
        raise SignatureVerificationError(
            "no signature matches the secret(s)", reason="mismatch", header=header
        )
    return timestamp


def verify(
    payload: bytes,
    header: str,
    secrets: str | Sequence[str],
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> Event:
    """The verified event, decoded from ``payload`` (the raw request body).

    ``secrets`` is one ``whsec_…`` secret or several (rotation). Raises
    :class:`SignatureVerificationError` when the header is malformed, too old or matches no secret.
    """
    verify_signature(payload, header, secrets, tolerance, now=now)
    try:
        return msgspec.json.decode(payload, type=Event)
    except msgspec.DecodeError as exc:
        raise SignatureVerificationError(f"signed payload is not an event: {exc}", reason="payload") from exc


def sign(payload: bytes, secrets: str | Sequence[str], *, timestamp: int | None = None) -> str:
    """A ``Payhub-Signature`` header for ``payload`` (for tests of your own receiver)."""
    keys = [secrets] if isinstance(secrets, str) else list(secrets)
    t = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={t}", *(f"v1={_signature(key, t, payload)}" for key in keys)])
