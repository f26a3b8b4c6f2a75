"""``customer_preferences``: one row per customer who saved preferences; tenant-scoped."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from gateway.domain.notifications import Preferences, QuietHours
from gateway.store.types import Connection

_COLUMNS = (
    "locale, timezone, default_currency, channels, email, phone, quiet_start, quiet_end, "
    "reminder_lead_days, theme, font_scale, updated"
)


@dataclass(frozen=True, slots=True)
class StoredPreferences:
    preferences: Preferences
    updated: datetime


def preferences_of(row: asyncpg.Record) -> Preferences:
    """Preferences from a row holding the columns above (also joined into other queries)."""
    quiet = None
    if row["quiet_start"] is not None and row["quiet_end"] is not None:
        quiet = QuietHours(row["quiet_start"], row["quiet_end"])
    return Preferences(
        locale=row["locale"],
        timezone=row["timezone"],
        default_currency=row["default_currency"],
        channels=tuple(row["channels"]),
        email=row["email"],
        phone=row["phone"],
        quiet_hours=quiet,
        reminder_lead_days=row["reminder_lead_days"],
        theme=row["theme"],
        font_scale=row["font_scale"],
    )


async def get(conn: Connection, *, tenant: str, customer_id: str) -> StoredPreferences | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM customer_preferences "  # noqa: S608 - fixed column list
        "WHERE tenant = $1 AND customer_id = $2",
        tenant,
        customer_id,
    )
    return StoredPreferences(preferences_of(row), row["updated"]) if row is not None else None


async def put(conn: Connection, *, tenant: str, customer_id: str, prefs: Preferences) -> StoredPreferences:
    """Replace the customer's preferences (insert or overwrite every column)."""
    quiet = prefs.quiet_hours
    row = await conn.fetchrow(
        f"""
        INSERT INTO customer_preferences (tenant, customer_id, locale, timezone, default_currency, channels,
            email, phone, quiet_start, quiet_end, reminder_lead_days, theme, font_scale)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
        ON CONFLICT (tenant, customer_id) DO UPDATE SET
            locale = EXCLUDED.locale, timezone = EXCLUDED.timezone,
            default_currency = EXCLUDED.default_currency, channels = EXCLUDED.channels,
            email = EXCLUDED.email, phone = EXCLUDED.phone, quiet_start = EXCLUDED.quiet_start,
            quiet_end = EXCLUDED.quiet_end, reminder_lead_days = EXCLUDED.reminder_lead_days,
            theme = EXCLUDED.theme, font_scale = EXCLUDED.font_scale, updated = now()
        RETURNING {_COLUMNS}
        """,  # noqa: S608 - fixed column list
        tenant,
        customer_id,
        prefs.locale,
        prefs.timezone,
        prefs.default_currency,
        list(prefs.channels),
        prefs.email,
        prefs.phone,
        quiet.start if quiet else None,
        quiet.end if quiet else None,
        prefs.reminder_lead_days,
        prefs.theme,
        prefs.font_scale,
    )
    assert row is not None
    return StoredPreferences(preferences_of(row), row["updated"])
