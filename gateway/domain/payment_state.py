"""The payment state machine (DESIGN §6): statuses, legal transitions and the actions they allow.

A payment is created in ``NEW`` (internal, never shown) and leaves it in the same transaction.
Terminal statuses never change again; refunds move money after ``succeeded`` without changing
the status (``amount_refunded`` grows instead), as Stripe does.

    new ──► requires_action ──► processing ──► succeeded
     │        │   ▲               │   ▲  │
     │        ▼   │               ▼   │  └──► requires_capture ──► succeeded / canceled
     ├──► under_review ───────────┘   │
     └──► failed / canceled ◄─────────┘ (declines, risk blocks, reversals, voids)
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Status(StrEnum):
    NEW = "new"
    REQUIRES_ACTION = "requires_action"
    PROCESSING = "processing"
    REQUIRES_CAPTURE = "requires_capture"
    UNDER_REVIEW = "under_review"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL: Final = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})

# Outcome-bearing targets reachable from every in-flight status.
_SETTLE: Final = frozenset({Status.SUCCEEDED, Status.REQUIRES_CAPTURE, Status.FAILED})

TRANSITIONS: Final[dict[Status, frozenset[Status]]] = {
    Status.NEW: frozenset(
        {Status.REQUIRES_ACTION, Status.UNDER_REVIEW, Status.PROCESSING, Status.CANCELED} | _SETTLE
    ),
    Status.REQUIRES_ACTION: frozenset({Status.PROCESSING, Status.CANCELED} | _SETTLE),
    Status.UNDER_REVIEW: frozenset({Status.PROCESSING, Status.REQUIRES_ACTION, Status.CANCELED} | _SETTLE),
    # The connector may ask for customer action late (e.g. a bank's step-up) but never un-knows an
    # outcome. `canceled` only once the connector confirmed the void that a cancel started (the
    # cancel holds the payment in `processing` meanwhile, so a concurrent capture cannot run).
    Status.PROCESSING: frozenset({Status.REQUIRES_ACTION, Status.CANCELED} | _SETTLE),
    # Capture (full/partial) or void; a capture whose outcome is unknown goes back to processing.
    Status.REQUIRES_CAPTURE: frozenset({Status.SUCCEEDED, Status.CANCELED, Status.PROCESSING, Status.FAILED}),
    Status.SUCCEEDED: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELED: frozenset(),
}

# Client actions and the statuses that allow them.
CONFIRMABLE: Final = frozenset({Status.REQUIRES_ACTION})
CAPTURABLE: Final = frozenset({Status.REQUIRES_CAPTURE})
CANCELABLE: Final = frozenset({Status.REQUIRES_ACTION, Status.REQUIRES_CAPTURE, Status.UNDER_REVIEW})
REVIEWABLE: Final = frozenset({Status.UNDER_REVIEW})
REFUNDABLE: Final = frozenset({Status.SUCCEEDED})


class IllegalTransition(Exception):
    """The requested change is not allowed from the payment's current status."""

    def __init__(self, current: Status, target: Status | str) -> None:
        super().__init__(f"A payment in status '{current}' cannot become '{target}'.")
        self.current = current
        self.target = target


def sources(target: Status) -> frozenset[Status]:
    """Every status the table lets move to ``target`` (what the store's guarded UPDATE accepts)."""
    return _SOURCES[target]


_SOURCES: Final[dict[Status, frozenset[Status]]] = {
    target: frozenset(source for source, targets in TRANSITIONS.items() if target in targets)
    for target in Status
}


def can_transition(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def transition(current: Status, target: Status) -> Status:
    """Return ``target`` if the move is legal, else raise IllegalTransition."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current, target)
    return target


def require(current: Status, allowed: frozenset[Status], action: str) -> None:
    """Guard for client actions (confirm, capture, cancel, refund, review)."""
    if current not in allowed:
        raise IllegalTransition(current, action)
