"""Database rows → public API objects (the Structs in gateway.views.schemas), encoded once."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from gateway.views import schemas

_ENCODER = msgspec.json.Encoder()


def timestamp(value: datetime) -> str:
    """RFC 3339 UTC with seconds precision, the way Stripe-style clients expect."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def payment(row: Any) -> schemas.Payment:
    risk = _json(row.risk)
    failure = schemas.Failure(row.failure_code, row.failure_message) if row.failure_code is not None else None
    return schemas.Payment(
        id=row.id,
        status=row.status,
        amount=row.amount,
        currency=row.currency,
        amount_captured=row.amount_captured,
        amount_refunded=row.amount_refunded,
        capture_method=row.capture_method,
        payment_method=_json(row.payment_method),
        customer=_json(row.customer),
        risk=msgspec.convert(risk, schemas.Risk) if risk is not None else None,
        next_action=_json(row.next_action),
        bill_posting=_json(row.bill_posting),
        connector=row.connector,
        connector_reference=row.connector_reference,
        failure=failure,
        description=row.description,
        metadata=_json(row.metadata),
        created=timestamp(row.created),
        updated=timestamp(row.updated),
        destination=row.destination_account,
        fx=_fx(row.bill),
    )


def _fx(bill: str | None) -> dict[str, Any] | None:
    if bill is None or '"fx"' not in bill:
        return None
    fx: dict[str, Any] | None = orjson.loads(bill).get("fx")
    return fx


def refund(row: Any) -> schemas.Refund:
    failure = schemas.Failure(row.failure_code) if row.failure_code is not None else None
    return schemas.Refund(
        id=row.id,
        payment=row.payment_id,
        amount=row.amount,
        currency=row.currency,
        status=row.status,
        reason=row.reason,
        failure=failure,
        metadata=_json(row.metadata),
        created=timestamp(row.created),
    )


def encode(value: Any) -> bytes:
    return _ENCODER.encode(value)


def device(row: Any) -> schemas.Device:
    return schemas.Device(row.id, row.customer_id, row.device_id, timestamp(row.created))


def list_entry(row: Any) -> schemas.ListEntry:
    return schemas.ListEntry(
        row.id, row.list, row.kind, row.value, row.tenant, row.note, row.created_by, timestamp(row.created)
    )


def manual_review(queued: Any) -> schemas.ManualReview:
    """An attempt in the manual queue (gateway.store.payments.ManualReview)."""
    attempt = queued.attempt
    return schemas.ManualReview(
        id=attempt.id,
        payment=attempt.payment_id,
        tenant=attempt.tenant,
        operation=attempt.operation,
        connector=attempt.connector,
        amount=attempt.amount,
        currency=queued.currency,
        refund=attempt.refund_id,
        reason=queued.reason,
        inquiries=attempt.tries,
        since=timestamp(queued.since),
    )


def review(row: Any) -> schemas.Review:
    """A payment under review as the operator queue shows it (the id names the payment)."""
    risk = _json(row.risk)
    return schemas.Review(
        id="rev_" + row.id.removeprefix("pay_"),
        payment=row.id,
        tenant=row.tenant,
        amount=row.amount,
        currency=row.currency,
        method=row.method,
        risk=msgspec.convert(risk, schemas.Risk) if risk is not None else None,
        created=timestamp(row.created),
    )
