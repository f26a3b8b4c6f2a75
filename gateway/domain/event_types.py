"""Every event type the hub emits (DESIGN §6 "Webhooks"), declared once.

Webhook endpoints subscribe to these (or to ``"*"``, every type); an ``enabled_events`` entry that
is not listed here is refused. A new event type is added here first, then emitted.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

EventType = Literal[
    "payment.requires_action",
    "payment.processing",
    "payment.requires_capture",
    "payment.under_review",
    "payment.succeeded",
    "payment.failed",
    "payment.canceled",
    "payment.capture_failed",
    "payment.cancel_failed",
    "payment.manual_review",
    "refund.succeeded",
    "refund.failed",
    "bill.posted",
    "bill.due_soon",
    "account.low_balance",
]
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)

ALL_EVENTS: Final = "*"
# What an endpoint's enabled_events may hold: any listed type, or "*" for every type.
Subscription = Literal[EventType, "*"]
SUBSCRIPTIONS: Final[tuple[str, ...]] = (*EVENT_TYPES, ALL_EVENTS)
