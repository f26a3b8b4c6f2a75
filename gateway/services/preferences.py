"""Customer preferences (``/v1/customers/{id}/preferences``): read with defaults, replace whole.

PUT semantics: the body is the whole object; a field left out takes its default (Stripe's update
would merge; a full replace keeps "what GET shows is what was PUT" without a way to unset fields).
Validation (gateway.domain.notifications) failures are 400s naming the field.
"""

from __future__ import annotations

import asyncpg

from gateway import errors
from gateway.domain.notifications import InvalidPreference, Preferences, validate_preferences
from gateway.store import preferences as store
from gateway.store.preferences import StoredPreferences
from gateway.views import schemas

MAX_CUSTOMER_ID = 64


def check_customer_id(customer_id: str, *, param: str = "id") -> str:
    if not 1 <= len(customer_id) <= MAX_CUSTOMER_ID:
        raise errors.InvalidRequest(f"{param} must be 1 to {MAX_CUSTOMER_ID} characters.", param=param)
    return customer_id


class PreferencesService:
    def __init__(self, pool: asyncpg.Pool, *, default_lead_days: int) -> None:
        self._pool = pool
        self.default_lead_days = default_lead_days

    def defaults(self) -> Preferences:
        return Preferences(reminder_lead_days=self.default_lead_days)

    async def get(self, tenant: str, customer_id: str) -> StoredPreferences | None:
        """The saved preferences, or None: the caller shows :meth:`defaults`."""
        check_customer_id(customer_id)
        async with self._pool.acquire() as conn:
            return await store.get(conn, tenant=tenant, customer_id=customer_id)

    async def put(self, tenant: str, customer_id: str, body: schemas.PreferencesInput) -> StoredPreferences:
        check_customer_id(customer_id)
        quiet = body.quiet_hours
        try:
            prefs = validate_preferences(
                locale=body.locale,
                timezone=body.timezone,
                default_currency=body.default_currency,
                channels=body.channels,
                email=body.email,
                phone=body.phone,
                quiet_hours=(quiet.start, quiet.end) if quiet is not None else None,
                reminder_lead_days=body.reminder_lead_days,
                theme=body.theme,
                font_scale=body.font_scale,
                default_lead_days=self.default_lead_days,
            )
        except InvalidPreference as exc:
            raise errors.InvalidRequest(str(exc), param=exc.param) from exc
        async with self._pool.acquire() as conn:
            return await store.put(conn, tenant=tenant, customer_id=customer_id, prefs=prefs)
