"""Development PKI: a private CA, the server certificate, per-tenant client certificates and the CRL.

Layout (DESIGN §3), all under ``$PAYHUB_HOME/pki``::

    ca.pem ca.key server.pem server.key crl.pem index.json
    clients/<name>.pem clients/<name>.key clients/<name>.p12

Design notes:

* Identity lives in the SAN URI as a SPIFFE ID (DESIGN §5); the CN is only a human-readable label.
  :func:`parse_spiffe_id` is the single parser the gateway uses, so it is deliberately strict: anything
  that is not exactly ``spiffe://payhub.local/tenant/<tenant>/role/<role>`` is rejected rather than
  normalised, because normalising an authentication input invites confusion attacks.
* ``index.json`` is the source of truth for what was issued and revoked; ``crl.pem`` is derived from it
  by :func:`write_crl`. Re-issuing a name moves its previous certificate into a ``superseded`` list in
  the entry instead of dropping it, so a revoked serial can never silently fall off the CRL.
* The server runs with ``VERIFY_CRL_CHECK_LEAF``, under which OpenSSL refuses *every* client when the
  CRL is missing or past its ``next_update``. Hence :func:`init_pki` always creates a CRL (even empty)
  and re-signs one that is about to expire.
* Every file is written atomically (temp file in the same directory + ``os.replace``) because the
  server reloads certificates and the CRL while running and must never read a half-written file.
  Private keys are created with mode 0600 from the first byte.
* Only ``cryptography`` is used; PKCS#12 export and CRL building need nothing from pyOpenSSL.
* This is a dev tool for a single operator: there is no locking between concurrent writers of the same
  PKI directory, and keys are stored unencrypted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ROLES",
    "TRUST_DOMAIN",
    "PkiError",
    "PkiPaths",
    "init_pki",
    "issue_client",
    "parse_spiffe_id",
    "revoke_client",
    "spiffe_id",
    "write_crl",
]

TRUST_DOMAIN = "payhub.local"
ROLES = ("client", "operator")

_TENANT_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# No "/" and no leading "." so a name can never escape clients/ or become a hidden/relative path.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SPIFFE_RE = re.compile(
    r"spiffe://"
    + re.escape(TRUST_DOMAIN)
    + r"/tenant/(?P<tenant>[a-z0-9][a-z0-9_-]{0,62})/role/(?P<role>"
    + "|".join(re.escape(r) for r in ROLES)
    + ")"
)

_CLOCK_SKEW = dt.timedelta(minutes=5)
_CRL_LIFETIME = dt.timedelta(days=365)
_CRL_REFRESH_MARGIN = dt.timedelta(days=7)
_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644
_DIR_MODE = 0o700


@dataclass(frozen=True)
class PkiPaths:
    """Where every PKI file lives; pure path arithmetic, touches nothing on disk."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.root / "server.key"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def clients_dir(self) -> Path:
        return self.root / "clients"

    def client_cert(self, name: str) -> Path:
        return self.clients_dir / f"{name}.pem"

    def client_key(self, name: str) -> Path:
        return self.clients_dir / f"{name}.key"

    def client_p12(self, name: str) -> Path:
        return self.clients_dir / f"{name}.p12"


class PkiError(Exception):
    """Invalid request (bad name, unknown role/client) or an unusable PKI directory."""


class _Record(TypedDict):
    serial: int
    tenant: str
    role: str
    not_after: str
    revoked_at: str | None


class _IndexEntry(_Record):
    # Earlier certificates for the same name; kept so their revocations survive a re-issue.
    superseded: NotRequired[list[_Record]]


# --------------------------------------------------------------------------------------------- SPIFFE


def spiffe_id(tenant: str, role: str) -> str:
    """The SAN URI for ``tenant``/``role``; raises :class:`PkiError` if the result would not parse back."""
    _check_tenant(tenant)
    _check_role(role)
    return f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/role/{role}"


def parse_spiffe_id(uri: str) -> tuple[str, str] | None:
    """``(tenant, role)`` for an exact payhub SPIFFE ID, else ``None``.

    ``fullmatch`` rather than ``^...$``: ``$`` would accept a trailing newline.
    """
    match = _SPIFFE_RE.fullmatch(uri)
    if match is None:
        return None
    return match["tenant"], match["role"]


# ------------------------------------------------------------------------------------------ public API


def init_pki(paths: PkiPaths, tenants: Mapping[str, str], *, days: int = 825) -> list[Path]:
    """Create whatever is missing (CA, server cert, CRL, one client per tenant) and return what was written.

    ``tenants`` maps tenant id -> role; each gets a client certificate named after the tenant. ``days`` is
    the lifetime of everything created here. Existing CA/server/client files are never overwritten, so a
    second call returns ``[]``. The one exception is ``crl.pem``: it is re-signed (and returned) when it
    expires within 7 days or cannot be parsed, because a stale CRL locks every client out.
    """
    for tenant, role in tenants.items():
        # Validate everything up front so a typo does not leave a half-initialised directory.
        _check_tenant(tenant)
        _check_role(role)
    created: list[Path] = []
    _ensure_dir(paths.root)
    _ensure_dir(paths.clients_dir)

    if not _pair_exists(paths.ca_cert, paths.ca_key):
        # A fresh CA would leave everything already issued unverifiable; refuse rather than half-work.
        leftovers = [p for p in (paths.server_cert, paths.server_key, paths.crl, paths.index) if p.exists()]
        if leftovers:
            raise PkiError(
                f"CA is missing but {', '.join(p.name for p in leftovers)} exist in {paths.root}; "
                "remove the directory to start a new PKI"
            )
        _create_ca(paths, days)
        created += [paths.ca_key, paths.ca_cert]

    ca_cert, ca_key = _load_ca(paths)

    if not _pair_exists(paths.server_cert, paths.server_key):
        _create_server(paths, ca_cert, ca_key, days)
        created += [paths.server_key, paths.server_cert]

    index_existed = paths.index.exists()
    for tenant, role in tenants.items():
        if _pair_exists(paths.client_cert(tenant), paths.client_key(tenant)):
            continue
        issue_client(paths, tenant, tenant=tenant, role=role, days=days)
        created += [paths.client_key(tenant), paths.client_cert(tenant), paths.client_p12(tenant)]
    if not index_existed and paths.index.exists():
        created.append(paths.index)

    if not paths.crl.exists():
        write_crl(paths)
        created.append(paths.crl)
    elif _crl_needs_refresh(paths, ca_cert):
        _write_crl(paths, ca_cert, ca_key, keep_from_existing=True)
        created.append(paths.crl)
    return created


def issue_client(paths: PkiPaths, name: str, *, tenant: str, role: str, days: int = 365) -> Path:
    """Issue (or re-issue) client certificate ``name`` for ``tenant``/``role``; returns the cert path.

    Re-issuing replaces the files with a new serial. The previous certificate is *not* revoked (call
    :func:`revoke_client` first if it was compromised) but stays recorded in the index.
    """
    _check_name(name)
    uri = spiffe_id(tenant, role)
    ca_cert, ca_key = _load_ca(paths)
    _ensure_dir(paths.clients_dir)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        _leaf_builder(subject, key, ca_cert, days)
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    cert = builder.sign(ca_key, hashes.SHA256())
    p12 = pkcs12.serialize_key_and_certificates(
        name=name.encode(),
        key=key,
        cert=cert,
        cas=[ca_cert],
        encryption_algorithm=serialization.NoEncryption(),
    )

    # Key before cert: a reader that sees the new cert must be able to find the matching key.
    _write_atomic(paths.client_key(name), _key_pem(key), _KEY_MODE)
    _write_atomic(paths.client_cert(name), _cert_pem(cert), _PUBLIC_MODE)
    # The .p12 embeds the private key, so it gets the key's permissions.
    _write_atomic(paths.client_p12(name), p12, _KEY_MODE)

    index = _read_index(paths)
    entry: _IndexEntry = {
        "serial": cert.serial_number,
        "tenant": tenant,
        "role": role,
        "not_after": cert.not_valid_after_utc.isoformat(),
        "revoked_at": None,
    }
    previous = index.get(name)
    if previous is not None:
        history = previous.get("superseded", [])
        history.append(_record_of(previous))
        entry["superseded"] = history
    index[name] = entry
    _write_index(paths, index)
    return paths.client_cert(name)


def revoke_client(paths: PkiPaths, name: str) -> int:
    """Revoke the current certificate of ``name`` and publish a new CRL; returns its serial.

    Idempotent: a second call keeps the original revocation time and only rewrites the CRL if it does
    not already list the serial (e.g. the first call died between writing the index and the CRL).
    """
    _check_name(name)
    index = _read_index(paths)
    entry = index.get(name)
    if entry is None:
        raise PkiError(f"no client certificate named {name!r}")
    serial = entry["serial"]
    if entry["revoked_at"] is None:
        entry["revoked_at"] = _now().isoformat(timespec="seconds")
        _write_index(paths, index)
    elif serial in _crl_serials(paths):
        return serial
    write_crl(paths)
    return serial


def write_crl(paths: PkiPaths) -> None:
    """(Re)build ``crl.pem`` from ``index.json``: every revoked serial, valid for 365 days."""
    ca_cert, ca_key = _load_ca(paths)
    _write_crl(paths, ca_cert, ca_key, keep_from_existing=False)


# ------------------------------------------------------------------------------------------- internals


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise PkiError(f"invalid client name {name!r}: expected {_NAME_RE.pattern}")


def _check_tenant(tenant: str) -> None:
    if not _TENANT_RE.fullmatch(tenant):
        raise PkiError(f"invalid tenant id {tenant!r}: expected {_TENANT_RE.pattern}")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise PkiError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pair_exists(cert: Path, key: Path) -> bool:
    """Whether a cert/key pair exists; a lone half is an error, since regenerating would overwrite it."""
    if cert.exists() and key.exists():
        return True
    if cert.exists() or key.exists():
        present, missing = (cert, key) if cert.exists() else (key, cert)
        raise PkiError(f"{present} exists but {missing} does not; restore it or remove both")
    return False


def _ensure_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        # mkdir's mode is filtered by the umask; chmod makes 0700 exact.
        path.chmod(_DIR_MODE)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so readers see either the old or the new file, never a mix."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    # O_EXCL + O_NOFOLLOW: never write through a pre-planted file or symlink; the mode applies from
    # creation, so a key is not world-readable even for the instant before a chmod.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            # The umask may have narrowed the mode (harmless) or, for public files, made it odd; be exact.
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _create_ca(paths: PkiPaths, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "payhub (dev)"),
            # Random suffix so two dev CAs are distinguishable in error messages and trust stores.
            x509.NameAttribute(NameOID.COMMON_NAME, f"payhub dev CA {secrets.token_hex(4)}"),
        ]
    )
    now = _now()
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        # Optional for a self-signed root per RFC 5280, but OpenSSL's VERIFY_X509_STRICT (default in
        # Python 3.13's create_default_context) rejects a CA without it.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(paths.ca_key, _key_pem(key), _KEY_MODE)
    _write_atomic(paths.ca_cert, _cert_pem(cert), _PUBLIC_MODE)


def _load_ca(paths: PkiPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(f"dev CA not found in {paths.root}; run init first") from exc
    except ValueError as exc:
        raise PkiError(f"dev CA in {paths.root} is unreadable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{paths.ca_key} is not an EC private key")
    if key.public_key() != cert.public_key():
        raise PkiError(f"{paths.ca_key} does not match {paths.ca_cert}")
    return cert, key


def _leaf_builder(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    days: int,
) -> x509.CertificateBuilder:
    """Extensions shared by server and client certificates; callers add SAN and EKU."""
    now = _now()
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            # ECDSA keys only ever sign in TLS; key_encipherment would be meaningless for them.
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )


def _create_server(
    paths: PkiPaths, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, days: int
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        _leaf_builder(subject, key, ca_cert, days)
        .add_extension(san, critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_atomic(paths.server_key, _key_pem(key), _KEY_MODE)
    _write_atomic(paths.server_cert, _cert_pem(cert), _PUBLIC_MODE)


# --------------------------------------------------------------------------------------- index and CRL


def _record_of(entry: _IndexEntry) -> _Record:
    return {
        "serial": entry["serial"],
        "tenant": entry["tenant"],
        "role": entry["role"],
        "not_after": entry["not_after"],
        "revoked_at": entry["revoked_at"],
    }


def _read_index(paths: PkiPaths) -> dict[str, _IndexEntry]:
    try:
        raw: Any = json.loads(paths.index.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise PkiError(f"{paths.index} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("serial"), int) for v in raw.values()
    ):
        raise PkiError(f"{paths.index} is not a name -> certificate record mapping")
    return cast(dict[str, _IndexEntry], raw)


def _write_index(paths: PkiPaths, index: Mapping[str, _IndexEntry]) -> None:
    data = json.dumps(dict(sorted(index.items())), indent=2) + "\n"
    _write_atomic(paths.index, data.encode(), _PUBLIC_MODE)


def _load_existing_crl(paths: PkiPaths, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The current CRL if it parses and is signed by this CA, else ``None``."""
    try:
        crl = x509.load_pem_x509_crl(paths.crl.read_bytes())
    except (FileNotFoundError, ValueError):
        return None
    public = ca_cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return None
    return crl if crl.is_signature_valid(public) else None


def _crl_serials(paths: PkiPaths) -> set[int]:
    try:
        crl = x509.load_pem_x509_crl(paths.crl.read_bytes())
    except (FileNotFoundError, ValueError):
        return set()
    return {revoked.serial_number for revoked in crl}


def _crl_needs_refresh(paths: PkiPaths, ca_cert: x509.Certificate) -> bool:
    crl = _load_existing_crl(paths, ca_cert)
    if crl is None:
        return True
    next_update = crl.next_update_utc
    return next_update is not None and next_update - _now() < _CRL_REFRESH_MARGIN


def _write_crl(
    paths: PkiPaths,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    keep_from_existing: bool,
) -> None:
    revoked: dict[int, dt.datetime] = {}
    existing = _load_existing_crl(paths, ca_cert)
    number = 1
    if existing is not None:
        with contextlib.suppress(x509.ExtensionNotFound):
            number = existing.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
        if keep_from_existing:
            # A re-sign must not drop an entry just because index.json was lost or hand-edited.
            revoked.update((r.serial_number, r.revocation_date_utc) for r in existing)
    for entry in _read_index(paths).values():
        for record in [*entry.get("superseded", []), entry]:
            if record["revoked_at"] is not None:
                revoked[record["serial"]] = dt.datetime.fromisoformat(record["revoked_at"])

    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + _CRL_LIFETIME)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_atomic(paths.crl, crl.public_bytes(serialization.Encoding.PEM), _PUBLIC_MODE)
