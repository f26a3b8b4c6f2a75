"""Message signatures: outbound webhooks (HMAC), biller parameters (RSA) and device step-up (Ed25519).

Pure and I/O-free: every function takes bytes/keys and returns or raises; nothing here reads a clock unless
the caller leaves ``timestamp``/``now`` unset. Primitives come from ``cryptography`` (RSA, Ed25519) and the
standard library's ``hmac``/``hashlib`` (HMAC-SHA256); nothing is hand-rolled.

Error hierarchy (what callers catch)::

    Exception
     ├── SignatureError              any bad signature: answer 400/401, never retry, never act on the message
     │    ├── SignatureMalformed     cannot even be checked: missing, garbled, oversized, wrong length,
     │    │                          unparsable key or parameters coming off the wire
     │    ├── SignatureMismatch      well-formed but does not verify under any of the keys/secrets
     │    └── SignatureExpired       webhook signature is authentic but its timestamp is outside the tolerance
     ├── ValueError / TypeError      *our* mistake, never the peer's: no secrets configured, bad tolerance,
     │                               RSA key under 2048 bits, a parameter value we do not know how to render
     └── (nothing else escapes a verify function, whatever bytes the peer sends)

Formats:

* Webhooks (DESIGN §6): ``Payhub-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`` where each ``v1`` is
  ``HMAC-SHA256(secret, "<t>.<raw body>")`` for one of the endpoint's current secrets (old and new during a
  rotation). Receivers reject ``|now - t| > 300`` s.
* Biller parameters (DESIGN §8): RSA-SHA256 over :func:`canonical_params`, i.e. keys sorted by code point,
  empty values and ``sign``/``sign_type`` dropped, joined as ``k=v&k2=v2`` with no escaping (the billers'
  format, Alipay style). Because nothing is escaped, ``{"a": "1&b=2"}`` and ``{"a": "1", "b": "2"}``
  canonicalise identically; callers must validate user-supplied values (the catalog's ``customer_params``
  regexes do) before signing them. Keys containing ``=`` or ``&`` are refused for the same reason.
* Device step-up (DESIGN §9): Ed25519 over the challenge; signatures travel as base64url without padding.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

__all__ = [
    "MAX_WEBHOOK_HEADER_LENGTH",
    "WEBHOOK_TOLERANCE_SECONDS",
    "SignatureError",
    "SignatureExpired",
    "SignatureMalformed",
    "SignatureMismatch",
    "canonical_params",
    "ed25519_sign",
    "ed25519_verify",
    "hmac_sha256_hex",
    "load_ed25519_public_key",
    "rsa_sign_params",
    "rsa_verify_params",
    "sign_webhook",
    "verify_webhook",
]

WEBHOOK_TOLERANCE_SECONDS = 300
# Real headers are ~80 bytes per secret; anything near this is an attack or a bug, and parsing it would
# only cost us CPU. 8 KiB is also the common default limit for one header line in HTTP servers.
MAX_WEBHOOK_HEADER_LENGTH = 8 * 1024

RsaScheme = Literal["pkcs1v15", "pss"]
_MIN_RSA_BITS = 2048
_ED25519_KEY_BYTES = 32
_ED25519_SIG_BYTES = 64
# Generous bounds on encoded inputs so that garbage is refused before we decode or parse it.
_MAX_B64_SIGNATURE_CHARS = 2048  # decodes to <= 1536 bytes: room for RSA keys up to 12288 bits
_MAX_PUBLIC_KEY_CHARS = 4096

# Item of the webhook header: a lowercase scheme token, "=", a value without commas.
_HEADER_KEY_RE = re.compile(r"[a-z0-9]+")
# One canonical decimal: no sign, no "_", no non-ASCII digits (int() accepts all three) and no leading
# zeros, so exactly one header spelling exists per timestamp (the HMAC covers the text as sent).
_TIMESTAMP_RE = re.compile(r"0|[1-9][0-9]{0,14}")
# Lowercase only: accepting "A" for "a" would make a flipped case bit verify.
_V1_RE = re.compile(r"[0-9a-f]{64}")
_B64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}|[A-Za-z0-9_-]*={0,2}")
_PEM_PREFIX = b"-----BEGIN"


class SignatureError(Exception):
    """A signature is missing, malformed, invalid or expired; the message must not be acted upon."""


class SignatureMalformed(SignatureError):
    """The signature, header, key or signed parameters cannot be parsed, so nothing could be verified."""


class SignatureMismatch(SignatureError):
    """Well-formed, but the signature does not verify under any of the given keys or secrets."""


class SignatureExpired(SignatureError):
    """The webhook signature verifies but its timestamp is further than the tolerance from now."""


# ------------------------------------------------------------------------------------------------- HMAC


def hmac_sha256_hex(key: bytes, message: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``message`` under ``key``."""
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _secret_bytes(secrets: Sequence[bytes | str]) -> list[bytes]:
    # A bare str is a Sequence[str] too: "whsec_x" would silently become seven one-letter secrets.
    if isinstance(secrets, (str, bytes)):
        raise TypeError("secrets must be a sequence of secrets, not a single secret")
    keys = [s.encode() if isinstance(s, str) else bytes(s) for s in secrets]
    if not keys:
        # Configuration error, not the peer's fault: surfacing it as SignatureError would hide it in 4xx logs.
        raise ValueError("at least one webhook secret is required")
    if any(not k for k in keys):
        raise ValueError("webhook secrets must not be empty")
    return keys


def _webhook_payload(timestamp: str, body: bytes) -> bytes:
    return timestamp.encode("ascii") + b"." + body


def sign_webhook(body: bytes, secrets: Sequence[bytes | str], *, timestamp: int | None = None) -> str:
    """The ``Payhub-Signature`` header value for ``body``: ``t=<unix>,v1=<hex>[,v1=<hex>...]``.

    One ``v1`` per secret, in the given order, so a receiver holding either the old or the new secret
    accepts the delivery during a rotation. ``str`` secrets are used as their UTF-8 bytes.
    """
    keys = _secret_bytes(secrets)
    if timestamp is None:
        timestamp = int(time.time())
    elif isinstance(timestamp, bool) or timestamp < 0:
        raise ValueError("timestamp must be a non-negative int")
    t = str(timestamp)
    payload = _webhook_payload(t, body)
    return ",".join([f"t={t}", *(f"v1={hmac_sha256_hex(key, payload)}" for key in keys)])


def _check_header_envelope(header: str) -> None:
    if not isinstance(header, str):
        # Typed as str, but this is the edge where a missing header (None) shows up at run time.
        raise SignatureMalformed("signature header is missing")
    if not header:
        raise SignatureMalformed("signature header is empty")
    if len(header) > MAX_WEBHOOK_HEADER_LENGTH:
        raise SignatureMalformed("signature header is too long")
    if not header.isascii():
        raise SignatureMalformed("signature header is not ASCII")


def _parse_webhook_header(header: str) -> tuple[str, list[bytes]]:
    _check_header_envelope(header)
    timestamp: str | None = None
    candidates: list[bytes] = []
    for raw_item in header.split(","):
        # Optional spaces/tabs around list items, as in any HTTP list header (proxies re-fold them).
        key, sep, value = raw_item.strip(" \t").partition("=")
        if not sep or not _HEADER_KEY_RE.fullmatch(key):
            raise SignatureMalformed("signature header item is not scheme=value")
        if key == "t":
            if timestamp is not None:
                # Two t= could let a parser differential (first vs last wins) pick an unsigned timestamp.
                raise SignatureMalformed("signature header has more than one t")
            if not _TIMESTAMP_RE.fullmatch(value):
                raise SignatureMalformed("signature timestamp is not a decimal integer")
            timestamp = value
        elif key == "v1":
            if not _V1_RE.fullmatch(value):
                raise SignatureMalformed("v1 signature is not 64 lowercase hex digits")
            candidates.append(bytes.fromhex(value))
        # Any other scheme (v0=, a future v2=) is ignored so that we can add schemes without breaking
        # receivers; it is never a way to succeed, since only v1 is ever checked.
    if timestamp is None:
        raise SignatureMalformed("signature header has no t")
    if not candidates:
        raise SignatureMalformed("signature header has no v1 signature")
    return timestamp, candidates


def verify_webhook(
    body: bytes,
    header: str,
    secrets: Sequence[bytes | str],
    *,
    tolerance: int = WEBHOOK_TOLERANCE_SECONDS,
    now: int | None = None,
) -> int:
    """Check a ``Payhub-Signature`` header against the raw ``body``; return its timestamp.

    Accepts when any ``v1`` matches any secret and ``|now - t| <= tolerance``. Raises
    :class:`SignatureMalformed` (unparsable header), :class:`SignatureMismatch` (no v1 matches) or
    :class:`SignatureExpired` (authentic but stale or from the future).
    """
    keys = _secret_bytes(secrets)
    if isinstance(tolerance, bool) or tolerance < 0:
        raise ValueError("tolerance must be a non-negative int")
    t, candidates = _parse_webhook_header(header)
    payload = _webhook_payload(t, body)
    expected = [hmac.new(key, payload, hashlib.sha256).digest() for key in keys]
    # compare_digest keeps the comparison constant-time; the loop's shape depends only on counts the
    # attacker already knows (how many v1 it sent) and how many secrets we hold.
    matched = False
    for candidate in candidates:
        for digest in expected:
            matched |= hmac.compare_digest(candidate, digest)
    if not matched:
        raise SignatureMismatch("no v1 signature matches any webhook secret")
    # The signature is checked before the clock so that "expired" always means a genuine (replayed or
    # skewed) delivery, never a forgery; forgeries are reported as mismatches whatever their t says.
    timestamp = int(t)
    current = int(time.time()) if now is None else now
    if abs(current - timestamp) > tolerance:
        raise SignatureExpired(
            f"signature timestamp is {current - timestamp} s from now (tolerance {tolerance} s)"
        )
    return timestamp


# ----------------------------------------------------------------------------------- biller parameters


def _render_value(value: object) -> str:
    if isinstance(value, str):
        return value
    # bool before int: bool is an int subclass and str(True) is "True", which no biller expects.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("cannot sign a non-finite float")
        # repr is the shortest round-tripping form; it is what a JSON parser on the other side gives back.
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("cannot sign a non-finite Decimal")
        return str(value)
    if isinstance(value, (Mapping, list, tuple)):
        # Compact, key-sorted and raw UTF-8, the JSON billers sign for nested fields (e.g. biz_content);
        # allow_nan=False because NaN/Infinity are not JSON and no peer would render them the same way.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # bytes, dates, enums...: any implicit str() here would be an interop bug that only shows as a
    # signature mismatch at the biller, so make the caller convert explicitly.
    raise TypeError(f"cannot render a {type(value).__name__} parameter for signing")


def canonical_params(
    params: Mapping[str, object], *, exclude: Collection[str] = ("sign", "sign_type")
) -> bytes:
    """The bytes billers sign: ``k=v&k2=v2`` in UTF-8, keys sorted by code point.

    ``None`` and ``""`` values and the ``exclude`` keys are dropped; ``bool`` renders as ``true``/``false``,
    numbers plainly, ``dict``/``list`` as compact JSON with sorted keys. Raises :class:`ValueError` or
    :class:`TypeError` for keys/values that have no unambiguous rendering.
    """
    parts: list[str] = []
    # sorted() on str compares code points, which is also byte order of the UTF-8 encoding, matching
    # billers that sort either way.
    for key in sorted(params):
        if not isinstance(key, str):
            raise TypeError("parameter names must be str")
        if key in exclude:
            continue
        value = params[key]
        if value is None or value == "":
            continue
        if not key or "=" in key or "&" in key:
            raise ValueError(f"parameter name {key!r} cannot be signed unambiguously")
        parts.append(f"{key}={_render_value(value)}")
    # surrogatepass is not used: a lone surrogate cannot be sent over the wire either, so fail loudly.
    return "&".join(parts).encode("utf-8")


def _rsa_padding(scheme: RsaScheme, *, verifying: bool) -> padding.AsymmetricPadding:
    if scheme == "pkcs1v15":
        return padding.PKCS1v15()
    if scheme == "pss":
        # Sign with salt = digest length (RFC 8017's recommendation, Java's and most billers' setting);
        # verify with AUTO so that peers using the maximum salt also pass. The salt length is not a
        # security parameter for the verifier, so accepting either costs nothing.
        salt = padding.PSS.AUTO if verifying else padding.PSS.DIGEST_LENGTH
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=salt)
    raise ValueError(f"unknown RSA signature scheme {scheme!r}")


def _check_rsa_size(key: RSAPrivateKey | RSAPublicKey) -> None:
    if key.key_size < _MIN_RSA_BITS:
        raise ValueError(f"RSA keys under {_MIN_RSA_BITS} bits are refused (got {key.key_size})")


def rsa_sign_params(
    params: Mapping[str, object], private_key: RSAPrivateKey, *, scheme: RsaScheme = "pkcs1v15"
) -> str:
    """Standard base64 RSA-SHA256 signature over :func:`canonical_params` of ``params``."""
    _check_rsa_size(private_key)
    signature = private_key.sign(
        canonical_params(params), _rsa_padding(scheme, verifying=False), hashes.SHA256()
    )
    return base64.b64encode(signature).decode("ascii")


def rsa_verify_params(
    params: Mapping[str, object],
    signature_b64: str,
    public_key: RSAPublicKey,
    *,
    scheme: RsaScheme = "pkcs1v15",
) -> None:
    """Verify a base64 (or base64url) RSA-SHA256 signature over :func:`canonical_params` of ``params``.

    ``params`` may still contain the ``sign`` field itself; it is excluded from the signed bytes.
    Raises :class:`SignatureMalformed` or :class:`SignatureMismatch`.
    """
    _check_rsa_size(public_key)
    rsa_padding = _rsa_padding(scheme, verifying=True)
    signature = _b64decode(signature_b64)
    if len(signature) != (public_key.key_size + 7) // 8:
        raise SignatureMalformed("RSA signature length does not match the key size")
    try:
        # These params come off the wire, so a key or value we cannot render is the peer's problem.
        data = canonical_params(params)
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError is a ValueError
        raise SignatureMalformed(f"signed parameters cannot be canonicalised: {exc}") from None
    try:
        public_key.verify(signature, data, rsa_padding, hashes.SHA256())
    except InvalidSignature:
        raise SignatureMismatch("RSA signature does not verify") from None


# -------------------------------------------------------------------------------------------- Ed25519


def _b64decode(text: str | bytes) -> bytes:
    """Strict decoding of standard or URL-safe base64 with optional padding.

    Strict because lenient decoders (``b64decode`` without ``validate``) skip junk characters, which would
    let many different strings stand for the same signature or key.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise SignatureMalformed("base64 data is not ASCII") from None
    if not isinstance(text, str):
        raise SignatureMalformed("base64 data must be str")
    if len(text) > _MAX_B64_SIGNATURE_CHARS or not text.isascii():
        raise SignatureMalformed("base64 data is too long or not ASCII")
    # Either alphabet, never a mix of both: a mix is not produced by any encoder.
    if not _B64_RE.fullmatch(text):
        raise SignatureMalformed("not base64 or base64url")
    unpadded = text.rstrip("=")
    if not unpadded or len(unpadded) % 4 == 1 or (text != unpadded and len(text) % 4):
        raise SignatureMalformed("base64 data has an impossible length or padding")
    std = unpadded.replace("-", "+").replace("_", "/")
    try:
        decoded = base64.b64decode(std + "=" * (-len(std) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureMalformed("not base64 or base64url") from None
    # Reject non-zero trailing bits ("AB==" vs "AA=="): one encoding per value.
    if base64.b64encode(decoded).decode("ascii").rstrip("=") != std:
        raise SignatureMalformed("base64 data is not canonically encoded")
    return decoded


def load_ed25519_public_key(data: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM SubjectPublicKeyInfo, raw 32 bytes, or base64/base64url of raw 32 bytes.

    Raises :class:`SignatureMalformed` on anything else (including PEM keys of other algorithms).
    """
    if isinstance(data, bytes) and len(data) == _ED25519_KEY_BYTES:
        # Raw bytes first: a raw key can happen to look like anything, text encodings cannot be 32 bytes
        # of raw key (base64 of 32 bytes is 43/44 characters).
        return _ed25519_from_raw(data)
    if not isinstance(data, (str, bytes)):
        raise SignatureMalformed("public key must be str or bytes")
    if len(data) > _MAX_PUBLIC_KEY_CHARS:
        raise SignatureMalformed("public key is too long")
    if isinstance(data, str):
        if not data.isascii():
            raise SignatureMalformed("public key is not ASCII")
        data = data.encode("ascii")
    # Keys pasted from files usually carry a trailing newline; whitespace is never part of the key.
    text = data.strip()
    if text.startswith(_PEM_PREFIX):
        try:
            key = serialization.load_pem_public_key(text)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SignatureMalformed("public key is not valid PEM") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureMalformed("PEM public key is not Ed25519")
        return key
    raw = _b64decode(text)
    if len(raw) != _ED25519_KEY_BYTES:
        raise SignatureMalformed("Ed25519 public key must be 32 bytes")
    return _ed25519_from_raw(raw)


def _ed25519_from_raw(raw: bytes) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SignatureMalformed("not an Ed25519 public key") from None


def ed25519_sign(private_key: Ed25519PrivateKey, message: bytes) -> str:
    """Ed25519 signature of ``message`` as base64url without padding (the device wire format)."""
    return base64.urlsafe_b64encode(private_key.sign(message)).rstrip(b"=").decode("ascii")


def ed25519_verify(public_key: Ed25519PublicKey | bytes, message: bytes, signature: bytes | str) -> None:
    """Verify an Ed25519 ``signature`` (raw 64 bytes, or base64url/base64 text) over ``message``.

    ``public_key`` may be a loaded key or any ``bytes`` form :func:`load_ed25519_public_key` accepts.
    Raises :class:`SignatureMalformed` or :class:`SignatureMismatch`.
    """
    key = public_key if isinstance(public_key, Ed25519PublicKey) else load_ed25519_public_key(public_key)
    raw = _b64decode(signature) if isinstance(signature, str) else signature
    if not isinstance(raw, bytes) or len(raw) != _ED25519_SIG_BYTES:
        raise SignatureMalformed("Ed25519 signature must be 64 bytes")
    try:
        # OpenSSL rejects non-canonical S (>= group order), so signatures are not malleable.
        key.verify(raw, message)
    except InvalidSignature:
        raise SignatureMismatch("Ed25519 signature does not verify") from None
