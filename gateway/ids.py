"""Prefixed object ids (``pay_``, ``re_``, ``acct_``, ``evt_`` …), Stripe style.

24 base62 characters from 144 random bits: unguessable, so ids are safe to show but are never
treated as secrets; every lookup is still scoped to the caller's tenant.
"""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_LENGTH = 24


def new_id(prefix: str) -> str:
    # One call into the CSPRNG, then 24 base62 digits of that number (they keep ~143 of its 144 bits).
    number = int.from_bytes(secrets.token_bytes(18))
    chars = []
    for _ in range(_LENGTH):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(chars)}"
