"""Card vault in PostgreSQL (``card_tokens``): tokenise a PAN, read display data, reveal for a connector.

* The PAN is stored only as AES-256-GCM ciphertext whose associated data is tenant + token id, plus
  a keyed HMAC fingerprint; display data is brand, BIN, last four and expiry. CVV is never accepted.
* Every read is scoped by tenant: another tenant's token id is indistinguishable from a missing one.
* :func:`vault_card` de-duplicates with ``INSERT ... ON CONFLICT DO NOTHING`` on
  (tenant, fingerprint, exp_month, exp_year), then reads the existing row on conflict. Concurrent
  vaulting of the same card therefore yields one row and one token for everybody: the losing INSERTs
  wait for the winner's commit, then see its row (READ COMMITTED, the default). One round trip for a
  new card, two for a known one.
* :func:`reveal_pan` is for the connector at authorisation time only; it goes through a
  :class:`~gateway.store.keyring.KeyringCache`, so a card sealed under a kid created by another
  process after this one loaded its keys still decrypts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from crypto.cards import Brand, CardDisplay, validate_expiry, validate_pan
from crypto.keyring import Keyring
from crypto.vault import SealedPan, VaultError, fingerprint, new_token_id, open_pan, seal_pan
from gateway.store.keyring import KeyringCache
from gateway.store.types import Connection, Rider

__all__ = ["StoredCard", "get_card", "reveal_pan", "vault_card"]


@dataclass(frozen=True, slots=True)
class StoredCard:
    """A vaulted card as the API may see it: token id, display data and fingerprint (never the PAN)."""

    token_id: str
    tenant: str
    display: CardDisplay
    fingerprint_kid: int
    # A stable identifier of the card across tenants: keep it out of logs and reprs.
    fingerprint: bytes = field(repr=False)
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


_COLUMN_NAMES = (
    "id",
    "tenant",
    "fingerprint",
    "fingerprint_kid",
    "brand",
    "bin",
    "last4",
    "exp_month",
    "exp_year",
    "created",
)
_COLUMNS = ", ".join(_COLUMN_NAMES)
CARD_FIELDS = len(_COLUMN_NAMES)
# A card already on file comes back from the same statement (one round trip, no write). Only if
# a concurrent transaction vaulted it after this statement's snapshot is nothing returned; the
# loop below then reads the winner's row. The CTEs (``inserted``, ``card``; parameters $1…$12)
# also open a payment's first statement (gateway/store/intake.py).
VAULT_CTES = f"""
    WITH inserted AS (
        INSERT INTO card_tokens
            (id, tenant, fingerprint, fingerprint_kid, kid, nonce, ciphertext,
             brand, bin, last4, exp_month, exp_year)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        ON CONFLICT (tenant, fingerprint, exp_month, exp_year) DO NOTHING
        RETURNING {_COLUMNS}
    ), card AS (
        SELECT {_COLUMNS} FROM inserted
        UNION ALL
        SELECT {_COLUMNS} FROM card_tokens
        WHERE tenant = $2 AND fingerprint = $3 AND exp_month = $11 AND exp_year = $12
          AND NOT EXISTS (SELECT 1 FROM inserted)
    )"""  # noqa: S608 - fixed column list, no user input
_INSERT = VAULT_CTES + "\n    SELECT * FROM card\n"  # noqa: S608 - fixed fragments
_INSERT_PARAMS = 12


def _insert_with(rider: Rider | None) -> str:
    """The insert, with a one-row read riding in its round trip (its columns after the card's)."""
    if rider is None:
        return _INSERT
    riding = rider.select(_INSERT_PARAMS + 1)
    return _INSERT.replace(
        "SELECT * FROM card",
        f"SELECT * FROM card CROSS JOIN ({riding}) AS rider",  # noqa: S608 - fixed SQL from the store
    )


_SELECT_DUPLICATE = f"""
    SELECT {_COLUMNS} FROM card_tokens
    WHERE tenant = $1 AND fingerprint = $2 AND exp_month = $3 AND exp_year = $4
"""  # noqa: S608 - fixed column list, no user input
_SELECT_TOKEN = f"SELECT {_COLUMNS} FROM card_tokens WHERE id = $1 AND tenant = $2"  # noqa: S608
# If the conflicting row is deleted between our INSERT and SELECT, try again (bounded).
_ATTEMPTS = 3


def _card(row: Any, prefix: str = "") -> StoredCard:
    """The card in ``row`` (its columns named ``prefix`` + the card_tokens column)."""
    display = CardDisplay(
        brand=cast(Brand, row[prefix + "brand"]),
        bin=row[prefix + "bin"],
        last4=row[prefix + "last4"],
        exp_month=row[prefix + "exp_month"],
        exp_year=row[prefix + "exp_year"],
    )
    return StoredCard(
        row[prefix + "id"],
        row[prefix + "tenant"],
        display,
        row[prefix + "fingerprint_kid"],
        bytes(row[prefix + "fingerprint"]),
        row[prefix + "created"],
    )


def card_columns(prefix: str) -> str:
    """The ``card`` CTE's columns, renamed with ``prefix`` (for a statement that selects others too)."""
    return ", ".join(f"card.{name} AS {prefix}{name}" for name in _COLUMN_NAMES)


def stored_card(row: Any, prefix: str) -> StoredCard | None:
    """The card a statement opened with :data:`VAULT_CTES` selected (None: a concurrent vaulting won)."""
    return _card(row, prefix) if row[prefix + "id"] is not None else None


@dataclass(frozen=True, slots=True)
class SealedCard:
    """A card ready for the vault: display data, fingerprint and the PAN sealed under a new token id."""

    display: CardDisplay
    fingerprint_kid: int
    fingerprint: bytes = field(repr=False)
    args: tuple[object, ...] = field(repr=False)  # $1…$12 of VAULT_CTES


def seal_card(
    keyring: Keyring, *, tenant: str, pan: str, exp_month: int, exp_year: int, today: dt.date | None = None
) -> SealedCard:
    """Validate and seal a card (CPU only). Raises ValueError (message without the PAN)."""
    digits = validate_pan(pan)
    month, year = validate_expiry(exp_month, exp_year, today or dt.datetime.now(dt.UTC).date())
    display = CardDisplay.from_pan(digits, month, year)
    fp_kid, fp = fingerprint(keyring, digits)
    token_id = new_token_id()
    sealed = seal_pan(keyring, tenant=tenant, token_id=token_id, pan=digits)
    del digits  # nothing below needs the clear PAN
    args = (token_id, tenant, fp, fp_kid, sealed.kid, sealed.nonce, sealed.ciphertext, display.brand)
    return SealedCard(display, fp_kid, fp, (*args, display.bin, display.last4, month, year))


async def vault_card(
    conn: Connection,
    keyring: Keyring,
    *,
    tenant: str,
    pan: str,
    exp_month: int,
    exp_year: int,
    today: dt.date | None = None,
) -> StoredCard:
    """Tokenise a card for ``tenant``; the same card and expiry already on file returns its token.

    Raises ValueError (message without the PAN) for an invalid number or expiry.
    """
    card, _ = await vault_card_riding(
        conn, keyring, tenant=tenant, pan=pan, exp_month=exp_month, exp_year=exp_year, today=today
    )
    return card


RiderFor = Callable[[CardDisplay, bytes], Rider]


async def vault_card_riding(
    conn: Connection,
    keyring: Keyring,
    *,
    tenant: str,
    pan: str,
    exp_month: int,
    exp_year: int,
    rider_for: RiderFor | None = None,
    today: dt.date | None = None,
) -> tuple[StoredCard, tuple[Any, ...] | None]:
    """:func:`vault_card`, with a read that needs the card's display data and fingerprint (a
    payment's risk features) riding in the same round trip: → (card, the rider's columns)."""
    card = seal_card(keyring, tenant=tenant, pan=pan, exp_month=exp_month, exp_year=exp_year, today=today)
    rider = rider_for(card.display, card.fingerprint) if rider_for is not None else None
    riding = rider.args if rider is not None else ()
    for _ in range(_ATTEMPTS):
        row = await conn.fetchrow(_insert_with(rider), *card.args, *riding)
        if row is not None:
            return _card(row), tuple(row)[len(_COLUMN_NAMES) :] if rider is not None else None
        # A concurrent vaulting won the race after this statement's snapshot: read its row (the
        # rider, if any, was not read; the caller reads it on its own).
        row = await conn.fetchrow(
            _SELECT_DUPLICATE, tenant, card.fingerprint, card.display.exp_month, card.display.exp_year
        )
        if row is not None:
            return _card(row), None
    raise VaultError("could not vault the card: its existing token kept disappearing; retry")


async def get_card(conn: Connection, *, tenant: str, token_id: str) -> StoredCard | None:
    """The card behind ``token_id`` if it belongs to ``tenant``, else None."""
    row = await conn.fetchrow(_SELECT_TOKEN, token_id, tenant)
    return None if row is None else _card(row)


async def reveal_pan(
    conn: Connection, keyring_cache: KeyringCache, *, tenant: str, token_id: str
) -> str | None:
    """The clear PAN of ``tenant``'s token, for the connector at authorisation time only; None if absent.

    Never log, store or return the result to a client.
    """
    row = await conn.fetchrow(
        "SELECT kid, nonce, ciphertext FROM card_tokens WHERE id = $1 AND tenant = $2", token_id, tenant
    )
    if row is None:
        return None
    kid: int = row["kid"]
    await keyring_cache.get(conn, kid)  # reloads once if another process rotated since our load
    sealed = SealedPan(kid, bytes(row["nonce"]), bytes(row["ciphertext"]))
    return open_pan(keyring_cache.keyring, sealed, tenant=tenant, token_id=token_id)
