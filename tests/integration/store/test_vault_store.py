"""Card vault in PostgreSQL: de-duplication (also concurrent), tenant isolation, no clear PAN at rest."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from crypto.keyring import Keyring, LocalKek
from crypto.vault import VaultError
from gateway.store.keyring import KeyringCache, load_keyring
from gateway.store.vault import StoredCard, get_card, reveal_pan, vault_card

KEK = LocalKek(bytes(range(32)))
YEAR = dt.date.today().year + 3
PANS = ["4111111111111111", "5555555555554444", "6212345678901265", "378282246310005"]


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db_url)
    yield connection
    await connection.close()


@pytest.fixture
async def keyring(conn: asyncpg.Connection) -> Keyring:
    return await load_keyring(conn, KEK)


async def test_vault_and_read_back(conn: asyncpg.Connection, keyring: Keyring) -> None:
    card = await vault_card(
        conn, keyring, tenant="acme", pan="4111 1111 1111 1111", exp_month=7, exp_year=YEAR
    )
    assert card.token_id.startswith("tok_")
    assert len(card.token_id) == 28
    assert (card.display.brand, card.display.bin, card.display.last4) == ("visa", "411111", "1111")
    assert (card.display.exp_month, card.display.exp_year) == (7, YEAR)
    assert card.fingerprint_kid == keyring.current("fingerprint").kid
    assert len(card.fingerprint) == 32
    assert "4111111111111111" not in repr(card)
    assert card.fingerprint.hex() not in repr(card)
    assert await get_card(conn, tenant="acme", token_id=card.token_id) == card
    cache = KeyringCache(KEK)
    assert await reveal_pan(conn, cache, tenant="acme", token_id=card.token_id) == "4111111111111111"
    assert await get_card(conn, tenant="acme", token_id="tok_missing") is None
    assert await reveal_pan(conn, cache, tenant="acme", token_id="tok_missing") is None


async def test_same_card_same_tenant_is_one_token(conn: asyncpg.Connection, keyring: Keyring) -> None:
    first = await vault_card(conn, keyring, tenant="acme", pan="4111111111111111", exp_month=7, exp_year=YEAR)
    again = await vault_card(
        conn, keyring, tenant="acme", pan="4111-1111-1111-1111", exp_month=7, exp_year=YEAR
    )
    assert again == first
    renewed = await vault_card(
        conn, keyring, tenant="acme", pan="4111111111111111", exp_month=8, exp_year=YEAR
    )
    assert renewed.token_id != first.token_id  # a re-issued card (new expiry) is a new token
    assert renewed.fingerprint == first.fingerprint  # ... but the same card for velocity
    assert await conn.fetchval("SELECT count(*) FROM card_tokens") == 2


async def test_concurrent_vaulting_of_one_card_yields_one_token(db_url: str, keyring: Keyring) -> None:
    conns = [await asyncpg.connect(db_url) for _ in range(10)]
    try:
        cards = await asyncio.gather(
            *(
                vault_card(c, keyring, tenant="acme", pan="5555555555554444", exp_month=1, exp_year=YEAR)
                for c in conns
            )
        )
        count = await conns[0].fetchval("SELECT count(*) FROM card_tokens")
    finally:
        for c in conns:
            await c.close()
    assert count == 1
    assert len({card.token_id for card in cards}) == 1


async def test_tenants_are_isolated(conn: asyncpg.Connection, keyring: Keyring) -> None:
    acme = await vault_card(conn, keyring, tenant="acme", pan="4111111111111111", exp_month=7, exp_year=YEAR)
    globex = await vault_card(
        conn, keyring, tenant="globex", pan="4111111111111111", exp_month=7, exp_year=YEAR
    )
    assert globex.token_id != acme.token_id
    assert globex.fingerprint == acme.fingerprint  # one card across tenants, for velocity
    cache = KeyringCache(KEK)
    assert await get_card(conn, tenant="globex", token_id=acme.token_id) is None
    assert await reveal_pan(conn, cache, tenant="globex", token_id=acme.token_id) is None
    assert await get_card(conn, tenant="acme", token_id=globex.token_id) is None
    assert await reveal_pan(conn, cache, tenant="acme", token_id=acme.token_id) == "4111111111111111"
    velocity = await conn.fetchval(
        "SELECT count(*) FROM card_tokens WHERE fingerprint = $1", acme.fingerprint
    )
    assert velocity == 2


async def test_a_ciphertext_moved_to_another_token_does_not_decrypt(
    conn: asyncpg.Connection, keyring: Keyring
) -> None:
    acme = await vault_card(conn, keyring, tenant="acme", pan="4111111111111111", exp_month=7, exp_year=YEAR)
    other = await vault_card(conn, keyring, tenant="acme", pan="5555555555554444", exp_month=7, exp_year=YEAR)
    globex = await vault_card(
        conn, keyring, tenant="globex", pan="6212345678901265", exp_month=7, exp_year=YEAR
    )
    # An attacker with write access to the table copies acme's ciphertext onto other tokens.
    for victim in (other, globex):
        await conn.execute(
            """
            UPDATE card_tokens t SET nonce = s.nonce, ciphertext = s.ciphertext, kid = s.kid
            FROM card_tokens s WHERE s.id = $1 AND t.id = $2
            """,
            acme.token_id,
            victim.token_id,
        )
        with pytest.raises(VaultError) as info:
            await reveal_pan(conn, KeyringCache(KEK), tenant=victim.tenant, token_id=victim.token_id)
        assert "4111111111111111" not in str(info.value)


@pytest.mark.parametrize(
    ("pan", "month", "year", "why"),
    [
        ("4111111111111112", 7, YEAR, "Luhn"),
        ("4111", 7, YEAR, "digits"),
        ("4111111111111111", 13, YEAR, "between 1 and 12"),
        ("4111111111111111", 1, 2020, "expired"),
    ],
)
async def test_invalid_cards_are_refused(
    conn: asyncpg.Connection, keyring: Keyring, pan: str, month: int, year: int, why: str
) -> None:
    with pytest.raises(ValueError, match=why) as info:
        await vault_card(conn, keyring, tenant="acme", pan=pan, exp_month=month, exp_year=year)
    assert pan not in str(info.value)
    assert await conn.fetchval("SELECT count(*) FROM card_tokens") == 0


async def _all_text(conn: asyncpg.Connection, table: str) -> str:
    catalog = (
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position"
    )
    columns = [row["column_name"] for row in await conn.fetch(catalog, table)]
    assert columns
    select = ", ".join(f'"{c}"::text' for c in columns)
    rows = await conn.fetch(f"SELECT {select} FROM {table}")  # names from the catalog
    return "\n".join(str(value) for row in rows for value in row)


async def test_no_clear_pan_in_the_database(conn: asyncpg.Connection, keyring: Keyring) -> None:
    cards: list[StoredCard] = []
    for tenant in ("acme", "globex"):
        for pan in PANS:
            cards.append(await vault_card(conn, keyring, tenant=tenant, pan=pan, exp_month=3, exp_year=YEAR))
    dump = (await _all_text(conn, "card_tokens")) + "\n" + (await _all_text(conn, "data_keys"))
    # The bytea columns really are in the dump: fingerprint, nonce, ciphertext per card; wrapped per key.
    assert dump.count("\\x") == 3 * len(cards) + len(keyring)
    for pan in PANS:
        assert pan not in dump
        assert pan.encode().hex() not in dump  # the PAN's bytes, as bytea text shows them
        assert pan[:-4] not in dump  # nor BIN + the hidden middle digits
        assert pan[6:] not in dump  # nor the hidden middle digits + last four
    for key in keyring:
        assert key.key.hex() not in dump  # no unwrapped data key either
    # Only display data in clear: brand, BIN and last four.
    row = await conn.fetchrow("SELECT bin, last4, brand FROM card_tokens WHERE id = $1", cards[0].token_id)
    assert row is not None
    assert tuple(row) == ("411111", "1111", "visa")
