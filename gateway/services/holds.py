"""Payments the risk engine holds before their connector call (DESIGN §9), and how they go on.

    screened ──challenge──► requires_action ──confirm (right answer)──► processing ──► …the money path
        │                        │  └──wrong answer: 400, tries counted; the last one locks step-up──┐
        │                        └──expired / locked──► failed (authentication_required) ◄────────────┘
        ├──review──► under_review ──approve (operator)──► processing ──► …the money path
        │                 └──reject (operator)──► failed (risk_blocked)
        └──block──► failed (risk_blocked)

A held payment is recorded with its decision, its velocity count and (for a challenge) the
challenge in one transaction; nothing reached a connector, so nothing is booked. Going on uses the
payment's own attempt machinery (PaymentService.release/authorize_released): the attempt is
recorded before the call, a retried confirm resumes it, and the resolver settles it after a crash.
Operator actions (approve, reject) are audited with the operator as actor and the payment's
tenant as tenant.
"""

from __future__ import annotations

import asyncpg
import orjson

from gateway import errors
from gateway.domain.payment_state import CONFIRMABLE, REVIEWABLE, Status
from gateway.identity import Identity
from gateway.logs import get_logger
from gateway.services.idempotent import KeyedRequest, Outcome, run_idempotent
from gateway.services.outcomes import Decision, refused
from gateway.services.payments import BLOCKED, PaymentService, Released
from gateway.services.risk import RiskService, Screening
from gateway.services.settle import Caller, Settler
from gateway.services.stepup import Issued, StepUp, Verdict
from gateway.store import payments as store
from gateway.store import risk as risk_store
from gateway.store.idempotency import Claimed
from gateway.store.types import Connection
from gateway.views import schemas
from risk.rules import Action

log = get_logger("gateway.holds")

AUTHENTICATION_REQUIRED = "authentication_required"


def _held(status: Status, event: str, next_action: dict[str, object] | None = None) -> Decision:
    action = orjson.dumps(next_action).decode() if next_action is not None else None
    return Decision(store.PaymentUpdate(status, next_action=action), "failed", event, 0)


class Holds:
    def __init__(
        self, pool: asyncpg.Pool, settler: Settler, stepup: StepUp, payments: PaymentService
    ) -> None:
        self.pool = pool
        self.risk: RiskService | None = None  # counts held payments when its counters are in Redis
        self._settler = settler
        self._stepup = stepup
        self._payments = payments

    # ---- holding ---------------------------------------------------------------------------------

    async def hold(
        self,
        payment: store.NewPayment,
        screening: Screening,
        customer: schemas.CustomerInput | None,
        caller: Caller,
        *,
        recorded: str | None = None,
    ) -> Outcome:
        """Record a payment whose decision is not `allow`, held (or failed) before any connector call.
        ``recorded``: the payment was recorded before its decision (a create's intake), with this
        first attempt, never sent: it ends, and the payment gets its decision and held details."""
        action = screening.decision.action
        issued: Issued | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            if recorded is None:
                await store.insert_payment(conn, payment)
            else:
                await store.screened_out(
                    conn,
                    tenant=payment.tenant,
                    payment_id=payment.id,
                    attempt_id=recorded,
                    risk=payment.risk,
                    held_details=payment.held_details,
                )
            if action is Action.CHALLENGE and screening.locked_until is not None:
                decision = refused(AUTHENTICATION_REQUIRED, "Step-up is locked after too many wrong answers.")
            elif action is Action.CHALLENGE:
                issued = await self._issue(conn, payment, customer)
                decision = (
                    _held(Status.REQUIRES_ACTION, "payment.requires_action", issued.next_action)
                    if issued is not None
                    # Nobody to challenge (no phone, no device): a person decides instead.
                    else _held(Status.UNDER_REVIEW, "payment.under_review")
                )
            elif action is Action.REVIEW:
                decision = _held(Status.UNDER_REVIEW, "payment.under_review")
            else:
                decision = BLOCKED
            outcome = await self._settler.payment(
                conn, payment.tenant, payment.id, None, decision, caller=caller, action="payment.create"
            )
        await self._stepup.deliver(issued.message if issued is not None else None)
        if self.risk is not None:
            await self.risk.counted(payment.tenant, payment.id, payment.risk_keys)
        return outcome

    async def _issue(
        self, conn: Connection, payment: store.NewPayment, customer: schemas.CustomerInput | None
    ) -> Issued | None:
        device = None
        if customer is not None and customer.id and customer.device_id:
            device = await risk_store.find_device(
                conn, tenant=payment.tenant, customer_id=customer.id, device_id=customer.device_id
            )
        return await self._stepup.issue(
            conn,
            tenant=payment.tenant,
            payment_id=payment.id,
            amount=payment.amount,
            currency=payment.currency,
            customer_id=payment.customer_id,
            phone=customer.phone if customer is not None else None,
            device=device,
        )

    # ---- step-up answers -------------------------------------------------------------------------

    async def confirm(
        self,
        identity: Identity,
        payment_id: str,
        params: schemas.ConfirmPaymentRequest,
        keyed: KeyedRequest,
        source: str | None,
    ) -> Outcome:
        if (params.otp is None) == (params.device_signature is None):
            raise errors.InvalidRequest("Send either otp or device_signature.", param="otp")
        caller = Caller(identity, source, keyed)
        tenant = identity.tenant

        async def work(claim: Claimed) -> Outcome:
            if claim.object_id is not None:
                return await self._payments.resume_released(
                    tenant, payment_id, caller, action="payment.confirm"
                )
            released: Released | None = None
            wrong: int | None = None
            outcome: Outcome | None = None
            async with self.pool.acquire() as conn, conn.transaction():
                row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
                if row is None:
                    raise errors.NotFound(f"No such payment: '{payment_id}'.", param="id")
                if row.status not in CONFIRMABLE:
                    raise _unexpected(row.status, "confirm")
                answer = await self._stepup.answer(
                    conn,
                    tenant=tenant,
                    payment_id=payment_id,
                    amount=row.amount,
                    currency=row.currency,
                    otp=params.otp,
                    signature=params.device_signature,
                )
                verdict = answer.verdict
                if verdict is Verdict.PASSED:
                    released = await self._payments.release(conn, row, caller, allowed=CONFIRMABLE)
                    if released is None:  # canceled meanwhile: the answer is undone with the rest
                        raise errors.Conflict(
                            "This payment no longer waits for a step-up.", code="payment_unexpected_state"
                        )
                elif verdict in (Verdict.EXPIRED, Verdict.LOCKED):
                    why = (
                        "The challenge expired."
                        if verdict is Verdict.EXPIRED
                        else "Too many wrong answers: step-up is locked for this customer."
                    )
                    outcome = await self._settler.payment(
                        conn,
                        tenant,
                        payment_id,
                        None,
                        refused(AUTHENTICATION_REQUIRED, why),
                        caller=caller,
                        action="payment.confirm",
                    )
                    if verdict is Verdict.LOCKED:
                        log.warning("stepup.locked", payment=payment_id, customer=row.customer_id)
                elif verdict is Verdict.WRONG:
                    wrong = answer.tries_left  # committed with this transaction, refused below
                elif verdict is Verdict.WRONG_KIND:
                    raise errors.InvalidRequest(
                        "This payment's challenge takes the other kind of answer.",
                        param="device_signature" if params.otp is not None else "otp",
                    )
                else:
                    raise _unexpected(row.status, "confirm")
            if wrong is not None:
                raise errors.InvalidRequest(
                    f"The answer is not right; {wrong} {'try' if wrong == 1 else 'tries'} left.",
                    code="authentication_failed",
                    param="otp" if params.otp is not None else "device_signature",
                )
            if released is not None:
                return await self._payments.authorize_released(released, caller, action="payment.confirm")
            assert outcome is not None
            return outcome

        return await run_idempotent(self.pool, keyed, work)

    async def expired(self, limit: int = 100) -> list[tuple[str, str]]:
        """(tenant, payment) of open challenges past their expiry, for the expiry loop."""
        async with self.pool.acquire() as conn:
            return await risk_store.expired_challenges(conn, limit=limit)

    async def expire(self, tenant: str, payment_id: str) -> bool:
        """Fail a payment whose challenge expired unanswered (the challenge worker calls this)."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The challenge is closed even when its payment moved on (canceled meanwhile): an open
            # expired challenge would come back to this loop for ever.
            answer = await self._stepup.answer(
                conn, tenant=tenant, payment_id=payment_id, amount=0, currency="", otp=None, signature=None
            )
            if answer.verdict is not Verdict.EXPIRED:
                return False
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            if row is None or row.status not in CONFIRMABLE:
                return False
            await self._settler.payment(
                conn,
                tenant,
                payment_id,
                None,
                refused(AUTHENTICATION_REQUIRED, "The challenge expired."),
                caller=Caller(),
                action="payment.challenge_expired",
            )
        return True

    # ---- review queue (operators) ----------------------------------------------------------------

    async def approve(self, operator: Identity, payment_id: str, source: str | None) -> Outcome:
        caller = Caller(operator, source, None)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._reviewable(conn, payment_id)
            released = await self._payments.release(conn, row, caller, allowed=REVIEWABLE)
            if released is None:
                raise _unexpected(row.status, "approve")
        return await self._payments.authorize_released(released, caller, action="review.approve")

    async def reject(self, operator: Identity, payment_id: str, source: str | None) -> Outcome:
        caller = Caller(operator, source, None)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._reviewable(conn, payment_id)
            decision = refused("risk_blocked", "Rejected in review.")
            return await self._settler.payment(
                conn, row.tenant, payment_id, None, decision, caller=caller, action="review.reject"
            )

    async def _reviewable(self, conn: Connection, payment_id: str) -> store.Payment:
        # Locked: an approve and a reject of one payment run one after the other, and the second
        # finds it no longer under review (a reject must never fail a payment already released).
        row = await store.get_payment_any_tenant(conn, payment_id=payment_id, for_update=True)
        if row is None:
            raise errors.NotFound(f"No such review: '{payment_id}'.", param="id")
        if row.status not in REVIEWABLE:
            raise _unexpected(row.status, "review")
        return row


def _unexpected(status: str, action: str) -> errors.ApiError:
    return errors.Conflict(
        f"You cannot {action} this payment because it has a status of {status}.",
        code="payment_unexpected_state",
    )
