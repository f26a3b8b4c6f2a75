"""Connector answers → payment state changes (pure): one table instead of ifs scattered around."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import orjson

from connectors.base import ConnectorError, ConnectorResult, Outcome
from gateway.domain.payment_state import Status
from gateway.store.payments import PaymentUpdate


@dataclass(frozen=True, slots=True)
class Decision:
    update: PaymentUpdate
    attempt_status: str  # payment_attempts.status
    event: str  # event type written to the outbox
    captured: int  # amount newly captured: the ledger moves exactly this much
    bill_posting_from: tuple[str, ...] | None = None  # guard on a bill payment's posting state
    post_bill: bool = False  # collected for a bill: record the post attempt in the same transaction


def after_authorize(result: ConnectorResult, *, amount: int, capture: bool) -> Decision:
    if result.outcome is Outcome.SUCCEEDED:
        authorized = result.amount_authorized or amount
        if capture:
            captured = result.amount_captured or authorized
            update = PaymentUpdate(Status.SUCCEEDED, authorized, captured, result.reference)
            return Decision(update, "succeeded", "payment.succeeded", captured)
        update = PaymentUpdate(Status.REQUIRES_CAPTURE, authorized, None, result.reference)
        return Decision(update, "succeeded", "payment.requires_capture", 0)
    if result.outcome is Outcome.FAILED:
        code = result.decline_code or "card_declined"
        update = PaymentUpdate(Status.FAILED, None, None, result.reference, None, code, result.message)
        return Decision(update, "failed", "payment.failed", 0)
    if result.outcome is Outcome.REQUIRES_ACTION:
        action = orjson.dumps(result.next_action).decode() if result.next_action else None
        update = PaymentUpdate(Status.REQUIRES_ACTION, None, None, result.reference, action)
        return Decision(update, "pending", "payment.requires_action", 0)
    update = PaymentUpdate(Status.PROCESSING, None, None, result.reference)
    return Decision(update, "pending", "payment.processing", 0)


def after_error(error: ConnectorError) -> Decision:
    if not error.outcome_known:
        # Sent, no answer: money may have moved. Stay processing until sync settles it; never guess.
        return Decision(PaymentUpdate(Status.PROCESSING), "unknown", "payment.processing", 0)
    update = PaymentUpdate(Status.FAILED, failure_code=error.code, failure_message=str(error) or None)
    return Decision(update, "failed", "payment.failed", 0)


def after_capture(result: ConnectorResult, *, amount: int) -> Decision:
    if result.outcome is Outcome.SUCCEEDED:
        captured = result.amount_captured or amount
        return Decision(
            PaymentUpdate(Status.SUCCEEDED, None, captured), "succeeded", "payment.succeeded", captured
        )
    if result.outcome is Outcome.FAILED:
        # The capture did not happen, but the authorization still stands: capture can be retried.
        code = result.decline_code or "capture_failed"
        update = PaymentUpdate(Status.REQUIRES_CAPTURE, failure_code=code, failure_message=result.message)
        return Decision(update, "failed", "payment.capture_failed", 0)
    return Decision(PaymentUpdate(Status.PROCESSING), "pending", "payment.processing", 0)


def after_void(result: ConnectorResult, *, authorized: bool) -> Decision:
    """A cancel's release at the connector: confirmed → canceled; refused → back to where it was."""
    if result.outcome is Outcome.SUCCEEDED:
        return Decision(PaymentUpdate(Status.CANCELED), "succeeded", "payment.canceled", 0)
    back = Status.REQUIRES_CAPTURE if authorized else Status.REQUIRES_ACTION
    return Decision(PaymentUpdate(back), "failed", "payment.cancel_failed", 0)


def stays(decision: Decision, current: Status) -> Decision:
    """A payment already ``processing`` (a released held payment) that the answer leaves processing
    keeps its status; only its attempt moves (``processing`` → ``processing`` is no transition)."""
    if current == Status.PROCESSING and decision.update.status == Status.PROCESSING:
        return dataclasses.replace(decision, update=dataclasses.replace(decision.update, status=None))
    return decision


def refused(code: str, message: str) -> Decision:
    """The hub fails a payment before (or instead of) any connector call: risk, step-up."""
    update = PaymentUpdate(Status.FAILED, failure_code=code, failure_message=message)
    return Decision(update, "failed", "payment.failed", 0)
