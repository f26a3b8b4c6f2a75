"""Prefixed object ids (``pay_``, ``re_``, ``acct_``, ``evt_`` …), Stripe style, in creation order.

``<prefix>_`` then 24 characters of ``A-Z a-z 0-9``:

* 9 characters of the creation time: Unix milliseconds in base 36 (``0-9 a-z``, zero-padded; ordered
  the same under the C collation and the usual locales), so ids of one kind sort by creation time;
* 15 random base62 characters (``crypto.base62``, ≈89 bits from one CSPRNG call): unguessable, so ids
  are safe to show but are never treated as secrets; every lookup is still scoped to the tenant.

Why ordered: a random id lands on a random leaf page of its primary key and of every index that holds
it (a payment's attempts, ledger transaction, events, audit rows). Past what fits in memory, every
such insert reads a page and, first after each checkpoint, writes the whole 8 kB page to the WAL. Ids
that grow with time insert at the right edge of those indexes, in pages already in memory and
already logged (docs/performance.md, "Growth"). The time they show is the object's ``created``,
which the API returns anyway.
"""

from __future__ import annotations

import time
from typing import Final

from crypto.base62 import random_base62

LENGTH: Final = 24
TIME_CHARS: Final = 9  # 36^9 ms ≈ 3,200 years
RANDOM_CHARS: Final = LENGTH - TIME_CHARS

_BASE36: Final = "0123456789abcdefghijklmnopqrstuvwxyz"


def time_part(unix_ms: int) -> str:
    """The 9 leading characters of an id made at ``unix_ms``."""
    digits = []
    for _ in range(TIME_CHARS):
        unix_ms, digit = divmod(unix_ms, 36)
        digits.append(_BASE36[digit])
    return "".join(reversed(digits))


def new_id(prefix: str) -> str:
    """``<prefix>_``, the time part and 15 random characters, e.g. ``pay_0mifc2k1pX7yLw2vQe8RfAa3``."""
    return prefix + "_" + time_part(time.time_ns() // 1_000_000) + random_base62(RANDOM_CHARS)
