"""A bill payment's posting to its biller: explicit states and the moves between them (pure).

The payment stays ``processing`` from collection until the posting is definite; these states say
where the posting is (``bill_posting.status`` in the API). ``none`` is "not collected yet".

    none ──► posting ──► posted
                │  ▲
                ▼  │ (status inquiry)
             pending ──► rejected / reversed   (the collected money is refunded)
                │
                └──► manual_review ──► posted / reversed  (an operator decides)

``posting → rejected`` is the biller refusing the payment outright.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

import orjson


class Posting(StrEnum):
    NONE = "none"
    POSTING = "posting"  # collected; the post attempt is recorded and being sent
    PENDING = "pending"  # sent, outcome unknown: the resolver asks the biller
    POSTED = "posted"
    REJECTED = "rejected"
    REVERSED = "reversed"
    MANUAL_REVIEW = "manual_review"


TRANSITIONS: Final[dict[Posting, frozenset[Posting]]] = {
    Posting.NONE: frozenset({Posting.POSTING}),
    Posting.POSTING: frozenset({Posting.POSTED, Posting.REJECTED, Posting.PENDING}),
    Posting.PENDING: frozenset({Posting.POSTED, Posting.REJECTED, Posting.REVERSED, Posting.MANUAL_REVIEW}),
    Posting.MANUAL_REVIEW: frozenset({Posting.POSTED, Posting.REVERSED}),
    Posting.POSTED: frozenset(),
    Posting.REJECTED: frozenset(),
    Posting.REVERSED: frozenset(),
}

IN_FLIGHT: Final = frozenset({Posting.POSTING, Posting.PENDING})


def sources(target: Posting) -> tuple[str, ...]:
    """Every posting state that may move to ``target`` (the guard of the store's UPDATE)."""
    return tuple(sorted(state.value for state, targets in TRANSITIONS.items() if target in targets))


def state_of(bill_posting: str | None) -> Posting:
    """The posting state in a payment's ``bill_posting`` JSON (``none`` when not collected yet)."""
    if bill_posting is None:
        return Posting.NONE
    return Posting(orjson.loads(bill_posting)["status"])
