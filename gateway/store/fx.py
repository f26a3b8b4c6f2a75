"""FX quotes in PostgreSQL. Every query is tenant-scoped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from gateway.store.types import Connection

_COLUMNS = """
    id, tenant, from_currency, to_currency, from_amount, to_amount, fee, mid_rate, rate, spread,
    rates_as_of, expires_at, used_key, used_at, created
"""


@dataclass(frozen=True, slots=True)
class Quote:
    id: str
    tenant: str
    from_currency: str
    to_currency: str
    from_amount: int
    to_amount: int
    fee: int
    mid_rate: Decimal
    rate: Decimal
    spread: Decimal
    rates_as_of: datetime
    expires_at: datetime
    used_key: str | None
    used_at: datetime | None
    created: datetime


def _quote(row: asyncpg.Record | None) -> Quote | None:
    return Quote(*row) if row is not None else None


async def insert_quote(
    conn: Connection,
    *,
    quote_id: str,
    tenant: str,
    from_currency: str,
    to_currency: str,
    from_amount: int,
    to_amount: int,
    fee: int,
    mid_rate: Decimal,
    rate: Decimal,
    spread: Decimal,
    rates_as_of: datetime,
    ttl_seconds: float,
) -> Quote:
    quote = _quote(
        await conn.fetchrow(
            f"""
            INSERT INTO fx_quotes (id, tenant, from_currency, to_currency, from_amount, to_amount, fee,
                                   mid_rate, rate, spread, rates_as_of, expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now() + make_interval(secs => $12))
            RETURNING {_COLUMNS}
            """,  # noqa: S608 - fixed column list
            quote_id,
            tenant,
            from_currency,
            to_currency,
            from_amount,
            to_amount,
            fee,
            mid_rate,
            rate,
            spread,
            rates_as_of,
            ttl_seconds,
        )
    )
    assert quote is not None
    return quote


async def get_quote(conn: Connection, *, tenant: str, quote_id: str) -> Quote | None:
    return _quote(
        await conn.fetchrow(
            f"SELECT {_COLUMNS} FROM fx_quotes WHERE id = $1 AND tenant = $2",  # noqa: S608
            quote_id,
            tenant,
        )
    )


async def claim_quote(conn: Connection, *, tenant: str, quote_id: str, key: str) -> Quote | None:
    """Mark the quote used by the request under ``key``; None when it is expired or another's.

    The same key claims it again (a retried request), so a crash between the claim and the
    payment's first write does not burn the quote.
    """
    return _quote(
        await conn.fetchrow(
            f"""
            UPDATE fx_quotes SET used_key = $3, used_at = coalesce(used_at, now())
            WHERE id = $1 AND tenant = $2 AND expires_at > now() AND (used_key IS NULL OR used_key = $3)
            RETURNING {_COLUMNS}
            """,  # noqa: S608 - fixed column list
            quote_id,
            tenant,
            key,
        )
    )
