"""The checker's webhook receiver (load/webhook_receiver.py) and when it fails on purpose.

Like a real receiver it is sometimes down for a moment: an attempt is answered 500 when a hash of
(event, attempt) says so (about one in four first attempts, one in eight second ones, never a later
one), so every event needs retries now and then and still arrives. A kill -9 of the gateway cuts
deliveries in flight; their lease expires and the next attempt is a new attempt number.
"""

from __future__ import annotations

import hashlib

from load.webhook_receiver import Receipt, WebhookReceiver

__all__ = ["Receipt", "WebhookReceiver", "fails", "model_receiver"]


def fails(event_id: str, attempt: int) -> bool:
    """Whether the receiver answers 500 to this attempt (deterministic)."""
    if attempt > 2:
        return False
    digest = hashlib.sha256(f"{event_id}:{attempt}".encode()).digest()[0]
    return digest < (64 if attempt == 1 else 32)


def model_receiver() -> WebhookReceiver:
    return WebhookReceiver(fails).start()
