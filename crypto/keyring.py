"""Keyring: versioned data-encryption keys (DEKs) wrapped by a key-encryption key (KEK).

DESIGN §7: the PAN at rest is AES-256-GCM under a versioned data key; the data keys are stored
wrapped by a KEK that never touches the database. This module is pure apart from reading/creating
the local KEK file; the ``data_keys`` table is handled by ``gateway.store.keyring``.

Design notes:

* :class:`KeyEncryptionKey` is the seam for a KMS or HSM: anything with ``kek_id``, ``wrap`` and
  ``unwrap`` works. :class:`LocalKek` is the built-in implementation (AES-256-GCM, random 96-bit
  nonce prefixed to the output).
* The wrapping context (associated data) binds the DEK's purpose and kid, so a wrapped key copied
  onto another ``data_keys`` row (another kid, or from "fingerprint" to "pan") fails to unwrap.
* Three purposes: ``"pan"`` keys encrypt PANs and are rotated routinely (new kid; old kids stay so old
  ciphertexts remain readable). The ``"fingerprint"`` key is the HMAC key for PAN fingerprints; it is
  rotated only on explicit request, because a new fingerprint key changes every fingerprint and so
  breaks de-duplication and velocity lookups against cards vaulted before. ``"secret"`` keys seal
  other secrets kept at rest (webhook signing secrets, crypto/webhook_secrets.py); rotated like
  ``"pan"`` keys.
* Kids are one sequence shared by every purpose (``data_keys.kid`` is the primary key).
* Key bytes never appear in a message or repr: :class:`DataKey` and :class:`LocalKek` override
  ``__repr__``, and ``PAYHUB_KEK`` is never echoed back in an error (nor chained into one).
* The KEK file is published atomically (written to a private temp file, then hard-linked into
  place), so two processes starting at once agree on one KEK and neither reads a half-written file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "KEK_ENV",
    "KEK_FILENAME",
    "KEY_BYTES",
    "DataKey",
    "KeyEncryptionKey",
    "Keyring",
    "KeyringError",
    "LocalKek",
    "Purpose",
    "generate_data_key",
    "load_kek",
    "unwrap_data_key",
    "wrap_context",
    "wrap_data_key",
]

Purpose = Literal["pan", "fingerprint", "secret"]
PURPOSES: tuple[Purpose, ...] = get_args(Purpose)

KEY_BYTES = 32  # AES-256 and HMAC-SHA256 keys
NONCE_BYTES = 12  # 96-bit GCM nonce
TAG_BYTES = 16
KEK_ENV = "PAYHUB_KEK"
KEK_FILENAME = "kek"
_FILE_MODE = 0o600
_DIR_MODE = 0o700


class KeyringError(Exception):
    """A key cannot be loaded, unwrapped or found. Messages never contain key material."""


@runtime_checkable
class KeyEncryptionKey(Protocol):
    """Wraps and unwraps data keys. Implement this for a KMS or HSM.

    ``context`` is authenticated but not encrypted: ``unwrap`` must fail (raise KeyringError) when it
    differs from the ``context`` given to ``wrap``, or when ``wrapped`` was altered.
    """

    @property
    def kek_id(self) -> str:
        """A stable, non-secret identifier of this KEK (recorded next to every wrapped key)."""
        ...

    def wrap(self, plaintext_key: bytes, *, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes: ...


class LocalKek:
    """A KEK held in process memory: AES-256-GCM, output = nonce (12 bytes) || ciphertext || tag."""

    __slots__ = ("_aead", "_kek_id")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            raise KeyringError(f"a key-encryption key must be exactly {KEY_BYTES} bytes")
        self._aead = AESGCM(bytes(key))
        # A truncated hash identifies the KEK without revealing anything usable about it.
        self._kek_id = hashlib.sha256(bytes(key)).hexdigest()[:16]

    @classmethod
    def generate(cls) -> LocalKek:
        return cls(os.urandom(KEY_BYTES))

    @property
    def kek_id(self) -> str:
        return self._kek_id

    def wrap(self, plaintext_key: bytes, *, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext_key, context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        if len(wrapped) < NONCE_BYTES + TAG_BYTES:
            raise KeyringError("wrapped key is too short")
        try:
            return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
        except InvalidTag:
            raise KeyringError(
                f"cannot unwrap data key with KEK {self._kek_id}: wrong KEK, wrong context or tampered data"
            ) from None

    def __repr__(self) -> str:
        return f"LocalKek(kek_id={self._kek_id!r})"


def load_kek(keys_dir: Path, env: Mapping[str, str]) -> LocalKek:
    """The KEK from ``PAYHUB_KEK`` (base64 of 32 bytes) or else from ``keys_dir/kek``.

    The file is created (mode 0600, directory 0700) with 32 random bytes when missing, and refused
    when group or others have any access to it. ``PAYHUB_KEK`` set but empty is an error, not "unset":
    a production deployment whose secret failed to render must not silently mint a new local KEK.
    """
    if KEK_ENV in env:
        return LocalKek(_decode_env_kek(env[KEK_ENV]))
    return LocalKek(load_key_file(keys_dir / KEK_FILENAME, "key-encryption key"))


def load_key_file(path: Path, what: str) -> bytes:
    """32 random bytes kept in ``path`` (mode 0600, directory 0700), created on first use; several
    processes starting at once all end up with the one that was published first."""
    try:
        return _read_key_file(path, what)
    except FileNotFoundError:
        pass
    _create_key_file(path)
    return _read_key_file(path, what)


def _decode_env_kek(value: str) -> bytes:
    # Errors name the variable but never repeat its value (not even a prefix of it).
    hint = f"{KEK_ENV} must be base64 of {KEY_BYTES} random bytes (e.g. `head -c 32 /dev/urandom | base64`)"
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = None
    if key is None:
        raise KeyringError(f"{KEK_ENV} is not valid base64; {hint}")
    if len(key) != KEY_BYTES:
        raise KeyringError(f"{KEK_ENV} decodes to {len(key)} bytes; {hint}")
    return key


def _read_key_file(path: Path, what: str) -> bytes:
    """The 32 key bytes; FileNotFoundError when absent, KeyringError when unusable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KeyringError(f"{path}: cannot open {what} file: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyringError(f"{path}: {what} must be a regular file")
        if info.st_mode & 0o077:
            raise KeyringError(
                f"{path}: {what} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); fix with `chmod 600 {path}`"
            )
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise KeyringError(f"{path}: {what} file must hold exactly {KEY_BYTES} bytes")
    return key


def _create_key_file(path: Path) -> None:
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(KEY_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if another process published first
        except FileExistsError:
            pass  # that process's KEK wins; the caller reads it
        else:
            _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class DataKey:
    """An unwrapped data key. ``repr`` shows kid and purpose only."""

    kid: int
    purpose: Purpose
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise KeyringError(f"unknown data key purpose {self.purpose!r}")
        if len(self.key) != KEY_BYTES:
            raise KeyringError(f"data key {self.kid} must be {KEY_BYTES} bytes")

    def __repr__(self) -> str:
        return f"DataKey(kid={self.kid}, purpose={self.purpose!r})"


def generate_data_key(kid: int, purpose: Purpose) -> DataKey:
    return DataKey(kid, purpose, os.urandom(KEY_BYTES))


def wrap_context(kid: int, purpose: Purpose) -> bytes:
    """Associated data binding a wrapped key to its ``data_keys`` row (kid and purpose)."""
    return f"payhub-dek:v1:{purpose}:{kid}".encode()


def wrap_data_key(kek: KeyEncryptionKey, key: DataKey) -> bytes:
    return kek.wrap(key.key, context=wrap_context(key.kid, key.purpose))


def unwrap_data_key(kek: KeyEncryptionKey, *, kid: int, purpose: Purpose, wrapped: bytes) -> DataKey:
    return DataKey(kid, purpose, kek.unwrap(wrapped, context=wrap_context(kid, purpose)))


class Keyring:
    """Immutable set of unwrapped data keys, by kid. A refresh builds a new Keyring."""

    __slots__ = ("_aead", "_current", "_keys")

    def __init__(self, keys: Iterable[DataKey]) -> None:
        self._keys: dict[int, DataKey] = {}
        for key in keys:
            if key.kid in self._keys:
                raise KeyringError(f"duplicate data key kid {key.kid}")
            self._keys[key.kid] = key
        self._current: dict[str, DataKey] = {}
        for key in sorted(self._keys.values(), key=lambda k: k.kid):
            self._current[key.purpose] = key
        self._aead: dict[int, AESGCM] = {}

    def current(self, purpose: Purpose) -> DataKey:
        """The newest key (highest kid) of ``purpose``: the one new data is protected with."""
        try:
            return self._current[purpose]
        except KeyError:
            raise KeyringError(f"no {purpose} data key in the keyring") from None

    def get(self, kid: int, purpose: Purpose | None = None) -> DataKey:
        """The key ``kid``; with ``purpose``, also check it is a key for that purpose."""
        key = self._keys.get(kid)
        if key is None:
            raise KeyringError(f"unknown data key kid {kid}")
        if purpose is not None and key.purpose != purpose:
            raise KeyringError(f"data key {kid} is a {key.purpose} key, not a {purpose} key")
        return key

    def aead(self, kid: int, purpose: Purpose = "pan") -> AESGCM:
        """A cached AES-GCM cipher for the ``purpose`` key ``kid`` (saves the key schedule per call).

        The purpose is checked on every call, cached or not: a ``pan`` key never seals a secret."""
        key = self.get(kid, purpose)
        cipher = self._aead.get(kid)
        if cipher is None:
            cipher = self._aead[kid] = AESGCM(key.key)
        return cipher

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def __iter__(self) -> Iterator[DataKey]:
        return iter(sorted(self._keys.values(), key=lambda k: k.kid))

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def kids(self) -> list[int]:
        return sorted(self._keys)

    def __repr__(self) -> str:
        return f"Keyring({', '.join(f'{k.kid}:{k.purpose}' for k in self)})"
