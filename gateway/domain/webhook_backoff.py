"""When a failed webhook delivery is tried again (pure).

Exponential back-off with jitter: attempt ``n`` (1-based) failed → wait a random time between half
and all of ``min(cap, base * 2**(n-1))``. The jitter spreads the retries of many deliveries that
failed together (a receiver that was down) so they do not all come back in the same instant;
keeping at least half the nominal delay keeps the schedule predictable for receivers and docs.
With the defaults (5 s, cap 1 h) the nominal delays are 5 s, 10 s, 20 s … 2560 s, then 1 h.
"""

from __future__ import annotations

import random
from collections.abc import Callable

# Past this many doublings the cap has long been reached; it keeps 2**n from growing unbounded.
_MAX_DOUBLINGS = 62


def nominal_delay(attempt: int, *, base: float, cap: float) -> float:
    """The delay before the retry that follows failed attempt ``attempt``, before jitter."""
    if attempt < 1:
        raise ValueError("attempt numbers start at 1")
    return min(cap, base * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))


def backoff_delay(
    attempt: int, *, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt ``attempt``: in [nominal / 2, nominal]."""
    nominal = nominal_delay(attempt, base=base, cap=cap)
    return nominal / 2 + rand() * nominal / 2
