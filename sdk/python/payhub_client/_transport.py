"""The one seam to the network: mTLS, retries with back-off, error mapping.

Retry rules (what makes a retry safe):

* a request that never reached the hub (the connection was refused or could not be opened) is
  retried whatever it is;
* a request that may have reached it (cut mid-way, timed out, or answered 5xx) is retried only
  when repeating it cannot do anything twice: GET and PUT, and POSTs sent with an
  ``Idempotency-Key`` (same key, same body bytes: the hub replays or resumes the first one);
* 429 (refused before any processing) is retried always, 409 ``request_in_progress`` (the first
  try with this key is still running) with the key;
* the wait is exponential with full jitter, ``uniform(0, min(cap, base * 2**n))``, unless the hub
  answered ``Retry-After`` (then that many seconds, at most ``MAX_RETRY_AFTER``).
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

from ._version import __version__
from .errors import APIConnectionError, PayhubError, error_from_response

DEFAULT_URL = "https://localhost:8443"
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
MAX_RETRY_AFTER = 60.0
USER_AGENT = f"payhub-client-python/{__version__}"


def ssl_context(
    *,
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
    cacert: str | os.PathLike[str] | None = None,
    p12: str | os.PathLike[str] | None = None,
    p12_password: str | bytes | None = None,
) -> ssl.SSLContext:
    """A client TLS context: trust ``cacert`` (else the system store), present the client certificate.

    ``p12`` (PKCS#12, needs the ``cryptography`` package: ``pip install payhub-client[p12]``) takes
    the place of ``cert`` + ``key``; when ``cacert`` is not given, the CA certificates inside the
    bundle are trusted as well as the system store (the hub's dev bundles carry the hub's CA).
    """
    ctx = ssl.create_default_context(cafile=os.fspath(cacert) if cacert else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if p12 is not None:
        _load_p12(ctx, Path(p12), p12_password, trust_bundle_cas=cacert is None)
    elif cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key else None)
    elif key is not None:
        raise ValueError("key given without cert")
    return ctx


def _load_p12(
    ctx: ssl.SSLContext, path: Path, password: str | bytes | None, *, trust_bundle_cas: bool
) -> None:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.serialization import pkcs12
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("PKCS#12 needs the cryptography package: pip install 'payhub-client[p12]'") from exc
    secret = password.encode() if isinstance(password, str) else password
    bundle = pkcs12.load_pkcs12(path.read_bytes(), secret)
    if bundle.key is None or bundle.cert is None:
        raise ValueError(f"{path}: the PKCS#12 bundle holds no key and certificate")
    key_pem = bundle.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain = [bundle.cert.certificate, *(c.certificate for c in bundle.additional_certs)]
    cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain[:1])
    # The ssl module loads keys from files only: a private directory that lives for one call.
    with tempfile.TemporaryDirectory(prefix="payhub-p12-") as directory:
        key_file, cert_file = Path(directory) / "key.pem", Path(directory) / "cert.pem"
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        cert_file.write_bytes(cert_pem)
        ctx.load_cert_chain(cert_file, key_file)
    if trust_bundle_cas:
        for extra in bundle.additional_certs:
            ctx.load_verify_locations(
                cadata=extra.certificate.public_bytes(serialization.Encoding.PEM).decode()
            )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def request_id(self) -> str | None:
        return self.headers.get("Request-Id")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def _decode_json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode(errors="replace")


def encode_body(body: Mapping[str, Any] | None) -> bytes | None:
    """The request body, encoded once (a retry sends these same bytes)."""
    if body is None:
        return None
    return msgspec.json.encode({k: v for k, v in body.items() if v is not None})


class Transport:
    """An aiohttp session over mTLS with the retry rules above."""

    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        user_agent: str = USER_AGENT,
        on_retry: Callable[[int, float, str], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.context = context
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.user_agent = user_agent
        self.on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.context)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": self.user_agent, "Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def backoff(self, attempt: int) -> float:
        """Full jitter: a random wait between 0 and min(cap, base * 2**attempt)."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))  # noqa: S311

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        max_retries: int | None = None,
        repeatable: bool | None = None,
    ) -> Response:
        """Send the request, retrying what is safe to retry; answer the 2xx or raise a PayhubError.

        ``repeatable=True`` marks a request without a key that the hub de-duplicates by itself (a
        token for the same card, the same device key): it is retried like a GET."""
        data = encode_body(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        query = {k: _query_value(v) for k, v in (params or {}).items() if v is not None}
        if repeatable is None:
            repeatable = method in {"GET", "PUT", "HEAD"} or idempotency_key is not None
        retries = self.max_retries if max_retries is None else max_retries
        attempt = 0
        while True:
            wait: float | None = None
            try:
                async with self._open().request(
                    method, self.url + path, params=query, data=data, headers=headers
                ) as resp:
                    raw = await resp.read()
                    answer = Response(resp.status, dict(resp.headers), raw)
            except aiohttp.ClientSSLError as exc:
                raise APIConnectionError(f"TLS failure talking to {self.url}: {exc}") from exc
            except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
                # Never reached the hub: always safe to try again.
                if attempt >= retries:
                    raise APIConnectionError(f"cannot connect to {self.url}: {exc}") from exc
                reason = "connect"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                # May have reached the hub: only a request that cannot act twice is sent again.
                if not repeatable or attempt >= retries:
                    raise APIConnectionError(f"no answer from {self.url}{path}: {exc!r}") from exc
                reason = type(exc).__name__
            else:
                if answer.status < 400:
                    return answer
                error = error_from_response(answer.status, _decode_json(answer.body), answer.headers)
                if attempt >= retries or not self._retriable(
                    answer.status, error, repeatable, idempotency_key
                ):
                    raise error
                wait = _retry_after(answer.headers)
                reason = error.code or str(answer.status)
            delay = self.backoff(attempt) if wait is None else wait
            attempt += 1
            if self.on_retry is not None:
                self.on_retry(attempt, delay, reason)
            await asyncio.sleep(delay)

    @staticmethod
    def _retriable(status: int, error: PayhubError, repeatable: bool, key: str | None) -> bool:
        if status == 429:
            return True
        if status == 409 and error.code == "request_in_progress":
            return key is not None
        return status >= 500 and repeatable


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        when = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def path_id(value: str) -> str:
    """An id as one path segment (the hub refuses odd characters with a 400 naming ``id``)."""
    return quote(value, safe="")
