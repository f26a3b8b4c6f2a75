"""Data keys in PostgreSQL: concurrent bootstrap, rotation while serving, KEK rotation, tamper checks."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from crypto.keyring import Keyring, KeyringError, LocalKek
from gateway.store.keyring import KeyringCache, load_keyring, rotate
from gateway.store.types import Connection
from gateway.store.vault import reveal_pan, vault_card

KEK = LocalKek(bytes(range(32)))
NEW_KEK = LocalKek(bytes(range(100, 132)))
YEAR = dt.date.today().year + 3


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


async def _rows(conn: Connection) -> list[tuple[int, str, str]]:
    rows = await conn.fetch("SELECT kid, purpose, kek_id FROM data_keys ORDER BY kid")
    return [(r["kid"], r["purpose"], r["kek_id"]) for r in rows]


async def _wrapped(conn: Connection) -> dict[int, bytes]:
    return {r["kid"]: r["wrapped"] for r in await conn.fetch("SELECT kid, wrapped FROM data_keys")}


def _material(keyring: Keyring) -> dict[int, bytes]:
    return {key.kid: key.key for key in keyring}


async def test_concurrent_bootstrap_creates_one_key_per_purpose(db_url: str) -> None:
    conns = [await asyncpg.connect(db_url) for _ in range(5)]
    try:
        keyrings = await asyncio.gather(*(load_keyring(c, KEK) for c in conns))
        rows = await _rows(conns[0])
    finally:
        for c in conns:
            await c.close()
    assert rows == [(1, "pan", KEK.kek_id), (2, "fingerprint", KEK.kek_id), (3, "secret", KEK.kek_id)]
    assert all(_material(k) == _material(keyrings[0]) for k in keyrings)  # everybody got the same keys
    assert keyrings[0].current("pan").kid == 1
    assert keyrings[0].current("fingerprint").kid == 2
    assert keyrings[0].current("secret").kid == 3


async def test_load_is_idempotent_and_refuses_a_wrong_kek(conn: asyncpg.Connection) -> None:
    first = await load_keyring(conn, KEK)
    again = await load_keyring(conn, KEK)
    assert _material(first) == _material(again)
    assert len(await _rows(conn)) == 3
    with pytest.raises(KeyringError, match=f"wrapped by KEK {KEK.kek_id}.*{NEW_KEK.kek_id}"):
        await load_keyring(conn, NEW_KEK)
    assert len(await _rows(conn)) == 3  # nothing written under the wrong KEK


async def test_rotation_while_serving(db_url: str) -> None:
    serving, operator = await asyncpg.connect(db_url), await asyncpg.connect(db_url)
    try:
        cache = KeyringCache(KEK)
        before = await cache.refresh(serving)
        old_card = await vault_card(
            serving, before, tenant="acme", pan="4111111111111111", exp_month=12, exp_year=YEAR
        )

        new_kid = await rotate(operator, KEK)
        assert new_kid == 4
        assert await _rows(operator) == [
            (1, "pan", KEK.kek_id),
            (2, "fingerprint", KEK.kek_id),
            (3, "secret", KEK.kek_id),
            (4, "pan", KEK.kek_id),
        ]

        # Another process (fresh load) encrypts new cards under the new version...
        after = await load_keyring(operator, KEK)
        assert after.current("pan").kid == 4
        assert after.current("fingerprint").kid == 2  # fingerprint key untouched by a pan rotation
        new_card = await vault_card(
            operator, after, tenant="acme", pan="5555555555554444", exp_month=12, exp_year=YEAR
        )
        kids = {r["id"]: r["kid"] for r in await operator.fetch("SELECT id, kid FROM card_tokens")}
        assert kids == {old_card.token_id: 1, new_card.token_id: 4}

        # ... and the serving cache, loaded before the rotation, reads both (refreshing on kid 4).
        assert 4 not in cache.keyring
        assert (
            await reveal_pan(serving, cache, tenant="acme", token_id=old_card.token_id) == "4111111111111111"
        )
        assert (
            await reveal_pan(serving, cache, tenant="acme", token_id=new_card.token_id) == "5555555555554444"
        )
        assert cache.keyring.current("pan").kid == 4  # new encryption now uses the new key
        assert _material(cache.keyring)[1] == _material(before)[1]  # old versions kept
    finally:
        await serving.close()
        await operator.close()


async def test_rotate_to_a_new_kek_rewraps_every_key(conn: asyncpg.Connection) -> None:
    original = await load_keyring(conn, KEK)
    card = await vault_card(
        conn, original, tenant="acme", pan="4111111111111111", exp_month=12, exp_year=YEAR
    )
    wrapped_before = await _wrapped(conn)

    kid = await rotate(conn, KEK, new_kek=NEW_KEK)
    assert kid == 4
    assert {kek_id for _, _, kek_id in await _rows(conn)} == {NEW_KEK.kek_id}
    wrapped_after = await _wrapped(conn)
    assert all(wrapped_after[k] != wrapped_before[k] for k in wrapped_before)

    rewrapped = await load_keyring(conn, NEW_KEK)
    assert {k: v for k, v in _material(rewrapped).items() if k != 4} == _material(original)
    with pytest.raises(KeyringError, match="wrapped by KEK"):
        await load_keyring(conn, KEK)
    cache = KeyringCache(NEW_KEK)
    assert await reveal_pan(conn, cache, tenant="acme", token_id=card.token_id) == "4111111111111111"

    # Re-running the same KEK rotation (e.g. after a crash that hid the outcome) is accepted.
    assert await rotate(conn, KEK, new_kek=NEW_KEK) == 5
    assert (await load_keyring(conn, NEW_KEK)).kids == [1, 2, 3, 4, 5]


async def test_explicit_fingerprint_rotation(conn: asyncpg.Connection) -> None:
    keyring = await load_keyring(conn, KEK)
    card = await vault_card(conn, keyring, tenant="acme", pan="4111111111111111", exp_month=12, exp_year=YEAR)
    assert await rotate(conn, KEK, purpose="fingerprint") == 4
    rotated = await load_keyring(conn, KEK)
    assert rotated.current("fingerprint").kid == 4
    assert rotated.current("pan").kid == 1
    again = await vault_card(
        conn, rotated, tenant="acme", pan="4111111111111111", exp_month=12, exp_year=YEAR
    )
    # The documented cost of a fingerprint rotation: the card no longer matches its old token.
    assert again.fingerprint_kid == 4
    assert again.token_id != card.token_id


async def test_failed_rotation_changes_nothing(conn: asyncpg.Connection) -> None:
    await load_keyring(conn, KEK)
    before = await conn.fetch("SELECT * FROM data_keys ORDER BY kid")
    with pytest.raises(KeyringError):
        await rotate(conn, NEW_KEK)  # wrong current KEK
    assert await conn.fetch("SELECT * FROM data_keys ORDER BY kid") == before


async def test_wrapped_keys_cannot_be_swapped_between_rows(conn: asyncpg.Connection) -> None:
    await load_keyring(conn, KEK)
    await conn.execute(
        """
        UPDATE data_keys d SET wrapped = o.wrapped
        FROM data_keys o WHERE d.kid <> o.kid
        """
    )
    with pytest.raises(KeyringError, match="cannot unwrap"):
        await load_keyring(conn, KEK)


async def test_data_keys_are_never_deleted(conn: asyncpg.Connection) -> None:
    await load_keyring(conn, KEK)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="never deleted"):
        await conn.execute("DELETE FROM data_keys WHERE kid = 1")


class CountingCache(KeyringCache):
    loads = 0

    async def _load(self, conn: Connection) -> Keyring:
        self.loads += 1
        return await super()._load(conn)


async def test_unknown_kid_burst_reloads_once(db_url: str) -> None:
    conns = [await asyncpg.connect(db_url) for _ in range(6)]
    try:
        cache = CountingCache(KEK)
        await cache.refresh(conns[0])
        kid = await rotate(conns[0], KEK)
        keys = await asyncio.gather(*(cache.get(c, kid) for c in conns))
        assert {k.kid for k in keys} == {kid}
        assert cache.loads == 2  # the first refresh + one reload for the whole burst
        with pytest.raises(KeyringError, match="unknown data key kid 99"):
            await cache.get(conns[0], 99)
    finally:
        for c in conns:
            await c.close()


async def test_cache_max_age(conn: asyncpg.Connection) -> None:
    now = [0.0]
    cache = KeyringCache(KEK, max_age=30.0, clock=lambda: now[0])
    with pytest.raises(KeyringError, match="not loaded"):
        _ = cache.keyring
    first = await cache.current(conn)
    await rotate(conn, KEK)
    now[0] = 29.0
    assert await cache.current(conn) is first
    now[0] = 31.0
    refreshed = await cache.current(conn)
    assert refreshed.current("pan").kid == 4
