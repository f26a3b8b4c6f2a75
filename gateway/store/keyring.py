"""Data keys in PostgreSQL (``data_keys``): bootstrap, rotation, and a per-process cache.

Design notes:

* Every writer (bootstrap, rotation) takes the transaction-scoped advisory lock
  :data:`KEYRING_LOCK_ID` and re-reads the table under it, so concurrent start-ups create exactly one
  key per purpose and kids (``max + 1``) never collide.
* :func:`rotate` runs in one transaction: the new key version and the re-wrap of every existing key
  commit together or not at all. Readers keep seeing the previous, consistent set until commit. Old
  data keys are kept (the table forbids DELETE), so every old ciphertext stays readable.
* A rotation to a new KEK is verified before commit (each re-wrapped key must unwrap under the new
  KEK to the same bytes), and may be re-run: rows already wrapped by the new KEK are accepted.
* :class:`KeyringCache` is how a serving process holds its keys. A ciphertext with a kid it does not
  know (another process rotated) triggers one reload, so a rotation while serving never breaks
  decryption; new encryption picks up the new key at the next refresh (periodic, via ``max_age``,
  or explicit). Reloads are serialised so a burst of requests causes one query, not one each.
* Processes that still run with the previous KEK after a KEK rotation keep their in-memory keys but
  can no longer reload (they get a KeyringError naming both KEK ids): deploy the new KEK first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import cast

from crypto.keyring import (
    PURPOSES,
    DataKey,
    KeyEncryptionKey,
    Keyring,
    KeyringError,
    Purpose,
    generate_data_key,
    unwrap_data_key,
    wrap_data_key,
)
from gateway.store.types import Connection

__all__ = ["KEYRING_LOCK_ID", "KeyringCache", "load_keyring", "rotate"]

# "payhub" + 2; distinct from the migration lock (… + 1).
KEYRING_LOCK_ID = 0x7061796875620002

_SELECT = "SELECT kid, purpose, kek_id, wrapped FROM data_keys ORDER BY kid"
_INSERT = "INSERT INTO data_keys (kid, purpose, kek_id, wrapped) VALUES ($1, $2, $3, $4)"

_Row = tuple[int, str, str, bytes]


async def _fetch(conn: Connection, *, for_update: bool = False) -> list[_Row]:
    rows = await conn.fetch(_SELECT + (" FOR UPDATE" if for_update else ""))
    return [(row["kid"], row["purpose"], row["kek_id"], bytes(row["wrapped"])) for row in rows]


def _unwrap_all(rows: Sequence[_Row], *keks: KeyEncryptionKey) -> Keyring:
    by_id = {kek.kek_id: kek for kek in keks}
    keys: list[DataKey] = []
    for kid, purpose, kek_id, wrapped in rows:
        kek = by_id.get(kek_id)
        if kek is None:
            raise KeyringError(
                f"data key {kid} is wrapped by KEK {kek_id}, but the configured KEK is "
                f"{' or '.join(by_id)}: is PAYHUB_KEK / the kek file the right one?"
            )
        keys.append(unwrap_data_key(kek, kid=kid, purpose=cast(Purpose, purpose), wrapped=wrapped))
    return Keyring(keys)


def _missing(rows: Sequence[_Row]) -> list[Purpose]:
    present = {purpose for _, purpose, _, _ in rows}
    return [p for p in PURPOSES if p not in present]


async def load_keyring(conn: Connection, kek: KeyEncryptionKey) -> Keyring:
    """All data keys, unwrapped; creates the first key of each purpose (pan, fingerprint, secret)
    when missing."""
    rows = await _fetch(conn)
    if not _missing(rows):
        return _unwrap_all(rows, kek)
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KEYRING_LOCK_ID)
        rows = await _fetch(conn)  # another process may have bootstrapped while we waited
        keyring = _unwrap_all(rows, kek)  # a wrong KEK fails here, before anything is written
        kid = max(keyring.kids, default=0)
        created: list[DataKey] = []
        for purpose in _missing(rows):
            kid += 1
            key = generate_data_key(kid, purpose)
            await conn.execute(_INSERT, key.kid, key.purpose, kek.kek_id, wrap_data_key(kek, key))
            created.append(key)
    return Keyring([*keyring, *created])


async def rotate(
    conn: Connection,
    kek: KeyEncryptionKey,
    *,
    purpose: Purpose = "pan",
    new_kek: KeyEncryptionKey | None = None,
) -> int:
    """Add a new ``purpose`` key version and re-wrap every key under ``new_kek or kek``; return its kid.

    Rotating ``"fingerprint"`` changes every future fingerprint (de-duplication against earlier cards
    stops matching); do it only on purpose.
    """
    target = new_kek or kek
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", KEYRING_LOCK_ID)
        rows = await _fetch(conn, for_update=True)
        keyring = _unwrap_all(rows, kek, target)
        new_key = generate_data_key(max(keyring.kids, default=0) + 1, purpose)
        rewrapped = [(key, wrap_data_key(target, key)) for key in keyring]
        for key, wrapped in rewrapped:
            # Never commit a wrap we cannot undo (a misbehaving KMS would otherwise lose every key).
            check = unwrap_data_key(target, kid=key.kid, purpose=key.purpose, wrapped=wrapped)
            if check.key != key.key:
                raise KeyringError(f"re-wrapped data key {key.kid} does not unwrap to the same key")
        await conn.executemany(
            "UPDATE data_keys SET wrapped = $2, kek_id = $3 WHERE kid = $1",
            [(key.kid, wrapped, target.kek_id) for key, wrapped in rewrapped],
        )
        await conn.execute(
            _INSERT, new_key.kid, new_key.purpose, target.kek_id, wrap_data_key(target, new_key)
        )
    return new_key.kid


class KeyringCache:
    """The keyring of a running process; reloads on an unknown kid and, optionally, every ``max_age`` s."""

    def __init__(
        self,
        kek: KeyEncryptionKey,
        *,
        max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kek = kek
        self._max_age = max_age
        self._clock = clock
        self._keyring: Keyring | None = None
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def keyring(self) -> Keyring:
        """The keyring as last loaded (KeyringError before the first load)."""
        if self._keyring is None:
            raise KeyringError("keyring not loaded yet: call refresh() first")
        return self._keyring

    async def _load(self, conn: Connection) -> Keyring:
        keyring = await load_keyring(conn, self._kek)
        self._keyring, self._loaded_at = keyring, self._clock()
        return keyring

    async def refresh(self, conn: Connection) -> Keyring:
        """Reload from the database (picks up keys created by a rotation elsewhere)."""
        async with self._lock:
            return await self._load(conn)

    async def current(self, conn: Connection) -> Keyring:
        """The keyring for new encryption: loaded on first use, reloaded when older than ``max_age``."""
        keyring = self._keyring
        if keyring is not None and (self._max_age is None or self._clock() - self._loaded_at < self._max_age):
            return keyring
        async with self._lock:
            if self._keyring is not None and self._keyring is not keyring:
                return self._keyring  # another task reloaded while we waited
            return await self._load(conn)

    async def get(self, conn: Connection, kid: int) -> DataKey:
        """Data key ``kid``, reloading once if this process does not know it yet."""
        keyring = self._keyring
        if keyring is not None and kid in keyring:
            return keyring.get(kid)
        async with self._lock:
            if self._keyring is None or kid not in self._keyring:
                await self._load(conn)
            return self.keyring.get(kid)
