"""Prefixed object ids (``pay_``, ``re_``, ``acct_``, ``evt_`` …), Stripe style.

``<prefix>_`` then 24 random base62 characters (``crypto.base62``: ≈143 bits from one CSPRNG call):
unguessable, so ids are safe to show but are never treated as secrets; every lookup is still scoped
to the caller's tenant.
"""

from __future__ import annotations

from typing import Final

from crypto.base62 import random_base62

LENGTH: Final = 24


def new_id(prefix: str) -> str:
    """``<prefix>_`` and 24 random base62 characters, e.g. ``pay_3kTMd9qZ0bX7yLw2vQe8RfAa``."""
    return prefix + "_" + random_base62(LENGTH)
