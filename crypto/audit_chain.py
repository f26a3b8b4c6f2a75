"""Hash chain and signed checkpoints for the audit trail (pure; no I/O but the key file).

Each sealed event links to the previous one: ``hash = SHA-256(prev_hash || canonical(event))``
from a zero genesis hash. After each batch the sealer signs a checkpoint
``(position, chain_hash, watermark)`` with an Ed25519 key kept outside the database, so someone
who can write to the database but lacks the key can neither rewrite history nor forge a
checkpoint for a rewritten chain.

    AuditChainError
    └── SealKeyError      the signing key file is missing, unreadable or too widely readable
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS_HASH = bytes(32)
SEAL_KEY_FILE = "audit_seal.key"


class AuditChainError(Exception):
    """The audit chain cannot be built or checked."""


class SealKeyError(AuditChainError):
    """The checkpoint signing key cannot be used."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One audit event as stored; ``canonical()`` is what the chain hashes."""

    seq: int
    at: datetime
    actor: str
    action: str
    outcome: str
    tenant: str | None = None
    source: str | None = None
    object: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def canonical(self) -> bytes:
        # Sorted keys, fixed UTC microsecond timestamps: the same row always encodes the same way.
        body = {
            "seq": self.seq,
            "at": self.at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "tenant": self.tenant,
            "actor": self.actor,
            "action": self.action,
            "outcome": self.outcome,
            "source": self.source,
            "object": self.object,
            "details": self.details,
        }
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def link(prev_hash: bytes, record: AuditRecord) -> bytes:
    return hashlib.sha256(prev_hash + record.canonical()).digest()


def checkpoint_message(position: int, chain_hash: bytes, watermark: int) -> bytes:
    return b"payhub-audit-checkpoint:v1:%d:%s:%d" % (position, chain_hash.hex().encode(), watermark)


@dataclass(frozen=True)
class SealKey:
    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        raw = self.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"SealKey({self.key_id})"


def load_seal_key(keys_dir: Path, *, create: bool = True) -> SealKey:
    """Read ``keys_dir/audit_seal.key`` (PKCS#8 PEM, mode 0600), creating it on first use."""
    path = keys_dir / SEAL_KEY_FILE
    if not path.exists():
        if not create:
            raise SealKeyError(f"{path}: audit signing key not found")
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            pass  # another process created it first: use theirs
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SealKeyError(f"{path}: readable by group/others; run: chmod 600 {path}")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SealKeyError(f"{path}: not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SealKeyError(f"{path}: not an Ed25519 key")
    return SealKey(key)
