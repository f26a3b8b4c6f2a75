"""The utility biller connector (I/O): signs, sends through the shared OutboundClient, verifies, maps.

Keys. Every request is signed with the hub's RSA private key and every answer is verified with the
biller's RSA public key (RSA2 = SHA256withRSA, 2048 bits or more).

* Production: the keys come from files named in config, never generated::

      [connectors.utility_biller]
      endpoint = "https://biller.example.cn"
      options = { merchant_id = "…", private_key = "/etc/payhub/keys/hub_utility.pem",
                  biller_public_key = "/etc/payhub/keys/biller_utility.pub" }

  ``private_key`` is a PKCS#8 (or PKCS#1) PEM file readable by the payhub user only (mode 0600,
  refused otherwise); the public half is what we register with the biller. ``biller_public_key`` is
  the PEM public key the biller publishes. Setting one of the two paths without the other is an error.
* Dev and tests (neither path set): both key pairs are dev keys created on first use under
  ``$PAYHUB_HOME/keys/sandbox/`` (``hub_utility.pem``/``.pub``, ``utility_biller.pem``/``.pub``), which
  the sandbox simulator reads too. Each file is written to a temporary file and published with an
  exclusive ``link()``, so concurrent processes all end up with the first key published.

Which error for what: read-only calls (query, status, reconciliation) raise ``SignatureError`` for a bad
answer signature and ``ConnectorUnavailable`` for an unreadable answer. For pay and reversal, an answer
that cannot be trusted says nothing about whether money moved, so it raises ``OutcomeUnknown`` (settle
with ``status``). A request the biller refused because of *our* signature (``SYS_SIGN_INVALID``) raises
``SignatureError`` whatever the operation: it was not processed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from config.settings import ConfigError, ConnectorSettings
from connectors.base import (
    Bill,
    BillerInfo,
    BillPayment,
    BillPosting,
    ConnectorUnavailable,
    OutcomeUnknown,
    SettlementLine,
    SignatureError,
)
from connectors.http import HttpReply, OutboundClient
from connectors.utility_biller import transformers as wire

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps

DEV_KEY_DIR = "sandbox"  # under settings.keys_dir
HUB_KEY_NAME = "hub_utility"
BILLER_KEY_NAME = "utility_biller"
DEV_MERCHANT_ID = "payhub_dev"
RSA_BITS = 2048


class KeyFileError(ConfigError):
    """A key file is missing, unreadable, too open, or not the expected kind of key."""


# ---- keys -------------------------------------------------------------------------------------------


def _publish(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` unless it exists; the first process to publish wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # link() is atomic and exclusive, unlike rename: if another process published first,
        # everybody uses theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_private_key(path: Path) -> RSAPrivateKey:
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read private key: {exc.strerror}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path}: private key is readable by group/others; run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, RSAPrivateKey) or key.key_size < RSA_BITS:
        raise KeyFileError(f"{path}: expected an RSA private key of at least {RSA_BITS} bits")
    return key


def load_public_key(path: Path) -> RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read public key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path}: not a PEM public key") from exc
    if not isinstance(key, RSAPublicKey) or key.key_size < RSA_BITS:
        raise KeyFileError(f"{path}: expected an RSA public key of at least {RSA_BITS} bits")
    return key


def ensure_dev_keypair(directory: Path, name: str) -> RSAPrivateKey:
    """``name.pem`` (0600) and ``name.pub`` in ``directory``, created on first use; the private key."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path = directory / f"{name}.pem"
    if not private_path.exists():
        fresh = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        pem = fresh.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _publish(private_path, pem, 0o600)
    key = load_private_key(private_path)  # the published one, which may not be ours
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = directory / f"{name}.pub"
    if not public_path.exists():
        _publish(public_path, public, 0o644)
    if public_path.read_bytes() != public:
        raise KeyFileError(f"{public_path} is not the public half of {private_path}")
    return key


def dev_key_dir(keys_dir: Path) -> Path:
    return keys_dir / DEV_KEY_DIR


def dev_keys(keys_dir: Path) -> tuple[RSAPrivateKey, RSAPrivateKey]:
    """(hub private key, sandbox biller private key), both created on first use."""
    directory = dev_key_dir(keys_dir)
    return ensure_dev_keypair(directory, HUB_KEY_NAME), ensure_dev_keypair(directory, BILLER_KEY_NAME)


def connector_keys(keys_dir: Path, options: Mapping[str, str]) -> tuple[RSAPrivateKey, RSAPublicKey]:
    """(our signing key, the biller's verification key): from config paths, else the dev keys."""
    private_path, public_path = options.get("private_key"), options.get("biller_public_key")
    if private_path or public_path:
        if not (private_path and public_path):
            raise ConfigError(
                "connectors.utility_biller: set both options.private_key and options.biller_public_key"
            )
        return load_private_key(Path(private_path)), load_public_key(Path(public_path))
    hub, biller = dev_keys(keys_dir)
    return hub, biller.public_key()


# ---- connector --------------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((value for key, value in headers.items() if key.lower() == lowered), None)


class UtilityBillerConnector:
    """BillerConnector for the utility billers of the 生活缴费 platform (DESIGN §8)."""

    def __init__(
        self,
        name: str,
        config: ConnectorSettings,
        http: OutboundClient,
        *,
        endpoint: str,
        merchant_id: str,
        private_key: RSAPrivateKey,
        biller_key: RSAPublicKey,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.name = name
        self._config = config
        self._http = http
        self._endpoint = endpoint.rstrip("/")
        self._merchant_id = merchant_id
        self._private_key = private_key
        self._biller_key = biller_key
        self._clock = clock

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> UtilityBillerConnector:
        private_key, biller_key = connector_keys(deps.settings.keys_dir, config.options)
        return cls(
            name,
            config,
            deps.http,
            endpoint=config.endpoint or deps.settings.sandbox.url("utility"),
            merchant_id=config.options.get("merchant_id", DEV_MERCHANT_ID),
            private_key=private_key,
            biller_key=biller_key,
        )

    async def describe(self) -> list[BillerInfo]:
        return [spec.info for spec in wire.BILLERS]

    # -- plumbing

    def _signed(self, params: Mapping[str, str]) -> dict[str, str]:
        return wire.sign_params(
            params,
            self._private_key,
            merchant_id=self._merchant_id,
            timestamp=wire.wire_timestamp(self._clock()),
        )

    async def _post(
        self, operation: str, path: str, params: Mapping[str, str], *, idempotent: bool
    ) -> HttpReply:
        return await self._http.request(
            self.name,
            self._config,
            operation,
            "POST",
            f"{self._endpoint}{path}",
            data=self._signed(params),
            idempotent=idempotent,
        )

    def _open(self, reply: HttpReply) -> dict[str, str]:
        if reply.status != 200:
            raise wire.MalformedAnswer(f"HTTP {reply.status}")
        return wire.open_answer(reply.body, self._biller_key, merchant_id=self._merchant_id)

    async def _read(self, operation: str, path: str, params: Mapping[str, str]) -> dict[str, str]:
        """An idempotent read: bad signatures stay SignatureError, garbage is 'unavailable'."""
        reply = await self._post(operation, path, params, idempotent=True)
        try:
            return self._open(reply)
        except wire.MalformedAnswer as exc:
            raise ConnectorUnavailable(f"{self.name}: unreadable {operation} answer: {exc}") from exc

    async def _money(self, operation: str, path: str, params: Mapping[str, str]) -> dict[str, str]:
        """Pay or reversal: an answer we cannot trust leaves the outcome unknown."""
        reply = await self._post(operation, path, params, idempotent=False)
        try:
            return self._open(reply)
        except (wire.MalformedAnswer, SignatureError) as exc:
            raise OutcomeUnknown(f"{self.name}: untrustworthy {operation} answer: {exc}") from exc

    # -- BillerConnector

    async def fetch_bills(self, biller: str, customer_params: Mapping[str, str]) -> list[Bill]:
        spec = wire.spec_for(biller)
        account = wire.account_of(spec, customer_params)
        answer = await self._read("query", "/api/query", wire.query_params(spec, account))
        try:
            return wire.bills_from_query(answer, spec, account)
        except wire.MalformedAnswer as exc:
            raise ConnectorUnavailable(f"{self.name}: {exc}") from exc

    async def pay(self, payment: BillPayment) -> BillPosting:
        spec = wire.spec_for(payment.biller)
        params = wire.pay_params(spec, payment)  # refuses bad input before anything is sent
        answer = await self._money("pay", "/api/pay", params)
        try:
            return wire.posting_from_pay(answer, payment.attempt_id)
        except wire.MalformedAnswer as exc:
            raise OutcomeUnknown(f"{self.name}: {exc}") from exc

    async def status(self, *, attempt_id: str, biller: str) -> BillPosting:
        spec = wire.spec_for(biller)
        answer = await self._read("status", "/api/status", wire.reference_params(spec, attempt_id))
        try:
            return wire.posting_from_status(answer, attempt_id)
        except wire.MalformedAnswer as exc:
            raise ConnectorUnavailable(f"{self.name}: {exc}") from exc

    async def reverse(self, *, attempt_id: str, biller: str) -> BillPosting:
        spec = wire.spec_for(biller)
        answer = await self._money("reverse", "/api/reverse", wire.reference_params(spec, attempt_id))
        try:
            return wire.posting_from_reverse(answer, attempt_id)
        except wire.MalformedAnswer as exc:
            raise OutcomeUnknown(f"{self.name}: {exc}") from exc

    async def settlement_report(self, biller: str, day: date) -> list[SettlementLine]:
        spec = wire.spec_for(biller)
        query = urllib.parse.urlencode(self._signed(wire.recon_params(spec, day)))
        url = f"{self._endpoint}/api/recon/{spec.wire_code}/{day.isoformat()}?{query}"
        reply = await self._http.request(self.name, self._config, "recon", "GET", url, idempotent=True)
        try:
            return wire.parse_recon_file(self._verified_file(reply, spec.wire_code, day), day)
        except (wire.MalformedAnswer, wire.MalformedReconFile, UnicodeDecodeError) as exc:
            raise ConnectorUnavailable(f"{self.name}: reconciliation file for {biller} {day}: {exc}") from exc

    def _verified_file(self, reply: HttpReply, wire_code: str, day: date) -> str:
        """The file's text once its signature (sent in headers, over its SHA-256) checks out."""
        if reply.status != 200:
            raise wire.MalformedAnswer(f"HTTP {reply.status}")
        if (_header(reply.headers, "Content-Type") or "").startswith("application/json"):
            wire.refuse_recon(self._open(reply))  # a signed refusal instead of the file
        params = wire.recon_signed_fields(wire_code, day, hashlib.sha256(reply.body).hexdigest())
        params |= {
            "merchant_id": _header(reply.headers, "X-Merchant-Id") or "",
            "timestamp": _header(reply.headers, "X-Timestamp") or "",
            "sign_type": _header(reply.headers, "X-Sign-Type") or "",
            "sign": _header(reply.headers, "X-Sign") or "",
        }
        wire.verify_params(params, self._biller_key)
        if params["merchant_id"] != self._merchant_id:
            raise wire.MalformedAnswer("file is for another merchant")
        return reply.body.decode("utf-8")
