"""The manual queue (docs/faults.md): operators settle the attempts no automatic policy could.

An attempt lands here when its connector's inquiry budget is spent and its terminal policy cannot
make the outcome definite (gateway/services/resolver.py). The operator asks the processor or biller
about the reference (the attempt id) and records its answer here. The answer goes through the same
path a late callback or status inquiry would take — the attempt row's guard makes it count once,
ledger and events included — with the operator as the audit actor.

    operation          outcome "succeeded"                        outcome "failed"
    authorize          the payment collected                      the payment failed (operator_failed)
    capture            captured                                   not captured (the authorization stands)
    void               canceled                                   as before the cancel
    refund             refund succeeded                           refund failed (refundable again)
    post_bill          posted                                     the biller holds nothing: reversed, refunded
    reverse_bill       the biller reversed: refunded              the reversal was refused: posted
"""

from __future__ import annotations

from datetime import datetime

import asyncpg

from connectors.base import BillPosting, ConnectorResult, Outcome
from gateway import errors
from gateway.identity import Identity
from gateway.logs import get_logger
from gateway.services.bills import BillPoster
from gateway.services.idempotent import Outcome as Response
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.settle import Caller, Settler
from gateway.store import payments as store

log = get_logger("gateway.manual_reviews")

OPERATOR_FAILED = "operator_failed"  # the failure code of an outcome an operator recorded as failed


class ManualReviews:
    def __init__(
        self,
        pool: asyncpg.Pool,
        payments: PaymentService,
        refunds: RefundService,
        bills: BillPoster,
        settler: Settler,
    ) -> None:
        self._pool = pool
        self._payments = payments
        self._refunds = refunds
        self._bills = bills
        self._settler = settler

    async def list(self, *, limit: int, starting_after: str | None) -> list[store.ManualReview]:
        async with self._pool.acquire() as conn:
            after: tuple[datetime, str] | None = None
            if starting_after is not None:
                cursor = await store.manual_review(conn, attempt_id=starting_after)
                if cursor is None:
                    raise errors.NotFound(
                        f"No such manual review: '{starting_after}'.", param="starting_after"
                    )
                after = (cursor.since, cursor.attempt.id)
            return await store.manual_reviews(conn, limit=limit, starting_after=after)

    async def resolve(
        self,
        operator: Identity,
        attempt_id: str,
        *,
        succeeded: bool,
        reference: str | None,
        source: str | None,
    ) -> Response:
        """Apply the operator's answer; the payment as it stands after it."""
        async with self._pool.acquire() as conn:
            queued = await store.manual_review(conn, attempt_id=attempt_id)
        if queued is None:
            raise errors.NotFound(f"No such manual review: '{attempt_id}'.", param="id")
        attempt, caller = queued.attempt, Caller(operator, source)
        tenant, payment_id = attempt.tenant, attempt.payment_id
        log.info(
            "manual_review.resolve",
            attempt=attempt.id,
            operation=attempt.operation,
            succeeded=succeeded,
            operator=operator.spiffe_id,
        )
        outcome = Outcome.SUCCEEDED if succeeded else Outcome.FAILED
        if attempt.operation == "refund" and attempt.refund_id is not None:
            await self._refunds.settle(
                tenant,
                attempt.refund_id,
                status="succeeded" if succeeded else "failed",
                reference=reference,
                failure=None if succeeded else OPERATOR_FAILED,
                caller=caller,
            )
        elif attempt.operation == "post_bill":
            code = None if succeeded else OPERATOR_FAILED
            posting = BillPosting(outcome, biller_reference=reference, code=code)
            await self._bills.finish(tenant, payment_id, attempt.id, posting, caller, reversed_=not succeeded)
        elif attempt.operation == "reverse_bill":
            async with self._pool.acquire() as conn:
                post = await store.latest_attempt(conn, payment_id=payment_id, operation="post_bill")
            assert post is not None
            # The reversal succeeded → the posting is undone (FAILED); refused → it stood (SUCCEEDED).
            undone = Outcome.FAILED if succeeded else Outcome.SUCCEEDED
            await self._bills.reversal_answered(
                tenant, payment_id, attempt.id, post.id, BillPosting(undone, reference), caller=caller
            )
        else:
            result = ConnectorResult(
                outcome,
                reference,
                decline_code=None if succeeded else OPERATOR_FAILED,
                message=None if succeeded else "Recorded as failed by an operator.",
            )
            await self._payments.settle_attempt(
                attempt.connector, attempt.id, result, action="payment.manual_resolve", caller=caller
            )
        async with self._pool.acquire() as conn:
            return await self._settler.current(conn, tenant, payment_id, caller)
