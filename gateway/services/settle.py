"""Phase 3 of every money movement, in one place: apply an outcome inside the caller's transaction.

Payments, refunds and bills all end here (Brandur Leach's atomic phases: record the attempt, call
outside any transaction, apply). Applying is: the guarded UPDATE of the object and its attempt
(an attempt is applied once: a duplicate callback or a racing resolver finds it settled and
changes nothing), the ledger moves from :mod:`gateway.domain.ledger_rules`, the event (outbox),
the audit row and the stored idempotent response — all in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.domain.fx import FxLeg
from gateway.domain.ledger_rules import (
    Funding,
    Leg,
    Movement,
    Purpose,
    Result,
    Role,
    collect_result,
    kind,
    legs,
)
from gateway.domain.payment_state import Status
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.logs import audit as log_audit
from gateway.metrics import Metrics
from gateway.services.idempotent import KeyedRequest, Outcome
from gateway.services.outcomes import Decision
from gateway.store import idempotency, ledger, settlement
from gateway.store import payments as store
from gateway.store.outcomes import OutcomeRecord, record_outcome
from gateway.store.types import Connection
from gateway.views import render


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked (None: the hub itself — a callback, the resolver) and what the response is stored under."""

    actor: Identity | None = None
    source: str | None = None
    keyed: KeyedRequest | None = None

    @property
    def spiffe_id(self) -> str:
        return self.actor.spiffe_id if self.actor else "payhub"

    @property
    def key(self) -> str | None:
        return self.keyed.key if self.keyed else None

    def unkeyed(self) -> Caller:
        """The same caller, whose response is stored by a later step (e.g. after a bill's posting)."""
        return Caller(self.actor, self.source, None)


HUB = Caller()


def log_outcome(record: OutcomeRecord, seq: int) -> None:
    """The audit line on stdout of an outcome whose audit row is ``seq``."""
    log_audit(
        record.action,
        actor=record.actor,
        outcome=record.outcome,
        source=record.source,
        object_id=record.object_id,
        tenant=record.tenant,
        audit_seq=seq,
        **record.details,
    )


async def record_and_log(conn: Connection, record: OutcomeRecord) -> None:
    """Event + audit row + stored response in one round trip, then the audit line on stdout."""
    seq = await record_outcome(conn, record)
    log_outcome(record, seq)


# ---- the ledger side ---------------------------------------------------------------------------


def purpose_of(payment: Any) -> Purpose:
    if payment.destination_account is not None:
        return Purpose.TOPUP
    return Purpose.BILL if payment.biller is not None else Purpose.PAYMENT


def funding_of(payment: Any) -> Funding:
    return Funding.BALANCE if payment.method == "balance" else Funding.CONNECTOR


def payer_account(payment: Any) -> str:
    account: str = orjson.loads(payment.payment_method)["balance"]["account"]
    return account


def fx_of(payment: Any) -> FxLeg | None:
    """The quote a bill payment pays with (its snapshot in the bill), or None."""
    if payment.bill is None or '"fx"' not in payment.bill:
        return None
    return FxLeg.of(orjson.loads(payment.bill).get("fx"))


def bill_amount(payment: Any) -> tuple[int, str]:
    """What the biller gets: the captured amount, or the quote's amount in the biller's currency."""
    fx = fx_of(payment)
    if fx is None:
        return payment.amount_captured, payment.currency
    return fx.share(payment.amount_captured)[0], fx.to_currency


def accounts(payment: Any, fx: FxLeg | None = None) -> dict[Role, ledger.AccountRef]:
    """The payment's two roles in the ledger rules, as accounts (``to`` in the quote's currency)."""
    tenant, currency = payment.tenant, payment.currency
    source: ledger.AccountRef = (
        payer_account(payment)
        if funding_of(payment) is Funding.BALANCE
        else ledger.SystemAccount(tenant, "connector_receivable", payment.connector, currency)
    )
    purpose = purpose_of(payment)
    target: ledger.AccountRef
    if purpose is Purpose.TOPUP:
        target = payment.destination_account
    elif purpose is Purpose.BILL:
        target = ledger.SystemAccount(
            tenant, "biller_payable", payment.biller, fx.to_currency if fx else currency
        )
    else:
        target = ledger.SystemAccount(tenant, "tenant_clearing", "default", currency)
    return {Role.FROM: source, Role.TO: target}


def _fx_moves(
    tenant: str, leg: Leg, roles: dict[Role, ledger.AccountRef], amount: int, fx: FxLeg
) -> list[ledger.Move]:
    """One leg of an FX payment, balanced in each currency through the ``fx`` accounts: the payer's
    side moves ``amount`` in the quote's from currency (its spread share to the fees account), the
    payee's side moves the converted share in the to currency. A leg within one role stays in
    that role's currency."""
    to_part, fee_part = fx.share(amount)
    source, target = fx.from_currency, fx.to_currency
    if leg.source == leg.destination:
        part, currency = (to_part, target) if leg.source is Role.TO else (amount, source)
        return [
            ledger.Move(
                roles[leg.source],
                roles[leg.source],
                part,
                currency,
                leg.source_bucket,
                leg.destination_bucket,
            )
        ]
    fx_source = ledger.SystemAccount(tenant, "fx", "default", source)
    fx_target = ledger.SystemAccount(tenant, "fx", "default", target)
    fees = ledger.SystemAccount(tenant, "fees", "fx_spread", source)
    if leg.destination is Role.TO:  # the payer's money goes out to the payee
        moves = [
            ledger.Move(roles[Role.FROM], fx_source, amount - fee_part, source, leg.source_bucket),
            ledger.Move(
                fx_target, roles[Role.TO], to_part, target, destination_bucket=leg.destination_bucket
            ),
        ]
        if fee_part:
            moves.append(ledger.Move(roles[Role.FROM], fees, fee_part, source, leg.source_bucket))
        return moves
    # the payee's side gives it back: the whole amount, spread included, returns to the payer
    moves = [
        ledger.Move(roles[Role.TO], fx_target, to_part, target, leg.source_bucket),
        ledger.Move(
            fx_source, roles[Role.FROM], amount - fee_part, source, destination_bucket=leg.destination_bucket
        ),
    ]
    if fee_part:
        moves.append(
            ledger.Move(fees, roles[Role.FROM], fee_part, source, destination_bucket=leg.destination_bucket)
        )
    return moves


def posting(
    payment: Any, movement: Movement, result: Result, amount: int, *, refund_id: str | None = None
) -> ledger.Posting:
    """The rule's moves for this payment, as one ledger transaction."""
    fx = fx_of(payment)
    roles = accounts(payment, fx)
    currency = payment.currency
    moves: list[ledger.Move] = []
    for leg in legs(movement, result):
        if fx is not None:
            moves += _fx_moves(payment.tenant, leg, roles, amount, fx)
        else:
            moves.append(
                ledger.Move(
                    roles[leg.source],
                    roles[leg.destination],
                    amount,
                    currency,
                    leg.source_bucket,
                    leg.destination_bucket,
                )
            )
    return ledger.Posting(
        payment.tenant, kind(movement, result, purpose_of(payment)), moves, payment.id, refund_id
    )


async def book(
    conn: Connection,
    payment: Any,
    movement: Movement,
    result: Result,
    amount: int,
    *,
    refund_id: str | None = None,
) -> None:
    """Post the rule's moves for this payment (InsufficientFunds if a balance would go negative)."""
    await ledger.post(conn, posting(payment, movement, result, amount, refund_id=refund_id))


async def _collection(conn: Connection, payment: Any, decision: Decision) -> ledger.Posting | None:
    """What collecting ``payment`` (the row as the decision leaves it) books, if anything."""
    purpose = purpose_of(payment)
    pending_booked = purpose is Purpose.TOPUP and await ledger.has_transaction(
        conn, payment_id=payment.id, kind=kind(Movement.COLLECT, Result.PENDING, purpose)
    )
    result = collect_result(
        purpose,
        captured=decision.captured > 0,
        pending=payment.status == Status.PROCESSING,
        failed=payment.status == Status.FAILED,
        pending_booked=pending_booked,
    )
    if result is None:
        return None
    amount = decision.captured if result is Result.SUCCEEDED else payment.amount
    return posting(payment, Movement.COLLECT, result, amount)


# ---- applying outcomes -------------------------------------------------------------------------


# A settlement finds its payment changed since it was read (another update committed in between)
# at most this many times before it leaves the attempt to the resolver.
_SETTLE_TRIES = 5


class Settler:
    """Applies outcomes; one instance per app (it counts payments in the metrics)."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Counts a decline under the payment's velocity keys when those counters live in Redis
        # (the risk service sets it); PostgreSQL's counters are counted by the settlement statement.
        self.declined: Callable[[Connection, str], Awaitable[None]] | None = None

    async def payment(
        self,
        conn: Connection,
        tenant: str,
        payment_id: str,
        attempt_id: str | None,
        decision: Decision,
        *,
        caller: Caller,
        action: str,
        extra_events: tuple[str, ...] = (),
        known: settlement.Known | None = None,
    ) -> Outcome:
        """Payment + attempt (guarded), ledger, event, audit, response: one statement
        (gateway/store/settlement.py), in the caller's transaction if it has one.

        ``known`` is the payment as the caller wrote it (a create's phase 1): it saves reading it.
        When the attempt was settled by someone else first (a callback, the resolver, a retry),
        nothing is applied twice: the answer is the payment as it stands, stored as the response.
        """
        for _ in range(_SETTLE_TRIES):
            if known is None:
                known = await settlement.read(conn, tenant=tenant, payment_id=payment_id)
                assert known is not None
            plan = await self._plan(
                conn, known, attempt_id, decision, caller=caller, action=action, extra_events=extra_events
            )
            try:
                settled = await settlement.settle(conn, plan)
            except settlement.Stale:
                known = None  # the payment changed since it was read: read it again
                continue
            if settled.applied:
                assert settled.audit_seq is not None
                return await self._applied(conn, plan, attempt_id, settled.audit_seq)
            break  # the attempt was settled first, or the state machine refuses the move
        return await self.current(conn, tenant, payment_id, caller)

    async def _plan(
        self,
        conn: Connection,
        known: settlement.Known,
        attempt_id: str | None,
        decision: Decision,
        *,
        caller: Caller,
        action: str,
        extra_events: tuple[str, ...],
    ) -> settlement.Settlement:
        """Everything the settlement writes, rendered from the row as the decision leaves it."""
        # The hub's clock sets ``updated`` (the response shows it), never before the known one.
        updated = max(datetime.now(UTC), known.row.updated)
        row = settlement.applied(known.row, decision.update, updated)
        posting = await _collection(conn, row, decision) if row.method != "balance" else None
        bill = None
        if decision.post_bill:
            # Recorded with the collection, so the posting exists before the biller is called and
            # the resolver finds it even if this process dies right after the commit.
            bill = settlement.BillAttempt(new_id("att"), row.biller or "", bill_amount(row)[0])
        body = render.encode(render.payment(row))
        return settlement.Settlement(
            known=known,
            update=decision.update,
            updated=updated,
            attempt_id=attempt_id or "",
            attempt_status=decision.attempt_status,
            bill_posting_from=decision.bill_posting_from,
            posting=posting,
            bill_attempt=bill,
            # A decline at the connector counts against the payment's velocity keys (card testing).
            count_decline=bool(attempt_id) and row.status == Status.FAILED and self.declined is None,
            extra_events=[(new_id("evt"), event) for event in extra_events],
            record=OutcomeRecord(
                tenant=row.tenant,
                object_id=row.id,
                event_id=new_id("evt"),
                event_type=decision.event,
                body=body,
                actor=caller.spiffe_id,
                action=action,
                outcome=row.status,
                source=caller.source,
                details={"amount": row.amount, "currency": row.currency, "method": row.method},
                idempotency_key=caller.key,
            ),
        )

    async def _applied(
        self, conn: Connection, plan: settlement.Settlement, attempt_id: str | None, audit_seq: int
    ) -> Outcome:
        record, row = plan.record, plan.known.row
        log_outcome(record, audit_seq)
        self._metrics.payments.labels(row.method, record.outcome, row.connector or "ledger").inc()
        if attempt_id and record.outcome == Status.FAILED and self.declined is not None:
            await self.declined(conn, row.id)
        return Outcome(200, record.body)

    async def manual_review(
        self,
        conn: Connection,
        tenant: str,
        payment_id: str,
        attempt_id: str,
        *,
        reason: str,
        operation: str,
        posting: str | None = None,
    ) -> bool:
        """Queue an attempt for an operator (its budget is spent, no policy settles it): the
        ``payment.manual_review`` event and an audit row, in the caller's transaction. False when it
        was settled or queued meanwhile (nothing written)."""
        if not await store.to_manual_review(
            conn, tenant=tenant, payment_id=payment_id, attempt_id=attempt_id, reason=reason, posting=posting
        ):
            return False
        row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
        assert row is not None
        await record_and_log(
            conn,
            OutcomeRecord(
                tenant=tenant,
                object_id=payment_id,
                event_id=new_id("evt"),
                event_type="payment.manual_review",
                body=render.encode(render.payment(row)),
                actor=HUB.spiffe_id,
                action="payment.manual_review",
                outcome=row.status,
                source=None,
                details={"attempt": attempt_id, "operation": operation, "reason": reason},
                idempotency_key=None,
            ),
        )
        self._metrics.manual_reviews.labels(operation, reason).inc()
        return True

    async def current(self, conn: Connection, tenant: str, payment_id: str, caller: Caller) -> Outcome:
        """The payment as it stands, stored as the caller's response (nothing else changes)."""
        current = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
        assert current is not None
        body = render.encode(render.payment(current))
        if caller.keyed is not None:
            await idempotency.finish(conn, tenant=tenant, key=caller.keyed.key, status=200, body=body)
        return Outcome(200, body)

    async def refund(
        self,
        conn: Connection,
        refund_id: str,
        *,
        tenant: str,
        status: str,
        reference: str | None,
        failure: str | None,
        caller: Caller,
    ) -> Outcome | None:
        """Settle a pending refund: ledger, payment's refunded amount, event, audit, response.

        None when the refund is no longer pending (settled by someone else first).
        """
        refund = await store.lock_refund(conn, tenant=tenant, refund_id=refund_id)
        if refund is None or refund.status != "pending":
            return None
        payment = await store.get_payment(conn, tenant=tenant, payment_id=refund.payment_id)
        assert payment is not None
        if status == "succeeded":
            await book(conn, payment, Movement.REFUND, Result.SUCCEEDED, refund.amount, refund_id=refund_id)
        elif status == "failed":
            await book(conn, payment, Movement.REFUND, Result.FAILED, refund.amount, refund_id=refund_id)
            await store.release_refund(conn, tenant=tenant, payment_id=payment.id, amount=refund.amount)
        await store.settle_refund_attempt(conn, refund_id=refund_id, status=status, reference=reference)
        return await self.refund_outcome(
            conn, refund_id, tenant=tenant, status=status, reference=reference, failure=failure, caller=caller
        )

    async def refund_outcome(
        self,
        conn: Connection,
        refund_id: str,
        *,
        tenant: str,
        status: str,
        reference: str | None,
        failure: str | None,
        caller: Caller,
    ) -> Outcome:
        row = await store.finish_refund(
            conn, tenant=tenant, refund_id=refund_id, status=status, reference=reference, failure_code=failure
        )
        body = render.encode(render.refund(row))
        await record_and_log(
            conn,
            OutcomeRecord(
                tenant=tenant,
                object_id=refund_id,
                event_id=new_id("evt"),
                event_type=f"refund.{status}",
                body=body,
                actor=caller.spiffe_id,
                action="refund.create" if caller.keyed else "refund.resolve",
                outcome=status,
                source=caller.source,
                details={"payment": row.payment_id, "amount": row.amount, "currency": row.currency},
                idempotency_key=caller.key,
            ),
        )
        return Outcome(200, body)
