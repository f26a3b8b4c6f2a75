"""Bill payments: collect the money, then post the payment to the biller (DESIGN §6, §8).

The payment stays ``processing`` between collection and posting; its captured money sits in the
biller's payable account. The posting's own states are in :mod:`gateway.domain.bill_posting`.
The post attempt is recorded in the transaction that books the collection, so it exists before
the biller is called; its id is the reference the biller de-duplicates on. Posting answers:

* posted          → ``succeeded``, ``bill_posting.status = posted`` (+ ``bill.posted`` event);
* rejected        → the payment ends ``failed`` / ``biller_rejected`` and the collected money goes
                    back through the refund service (to the card, bank, wallet or stored balance);
* no answer (yet) → ``bill_posting.status = pending``; the resolver asks the biller's status
                    inquiry with back-off until it is definite, then applies the terminal policy:
                    a reversal (冲正, an attempt of its own) or the operators' manual queue.

A post or reversal interrupted by a crash is sent again by a retry or by the resolver, under the
same reference: never posted twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import asyncpg
import orjson

from connectors.base import (
    REFERENCE_NOT_FOUND,
    BillerConnector,
    BillerInfo,
    BillPayment,
    BillPosting,
    ConnectorError,
    Outcome,
)
from gateway.domain.bill_posting import Posting, sources, state_of
from gateway.domain.payment_state import Status
from gateway.ids import new_id
from gateway.logs import get_logger
from gateway.services.idempotent import Outcome as Response
from gateway.services.outcomes import Decision
from gateway.services.settle import HUB, Caller, Settler, bill_amount
from gateway.store import payments as store

if TYPE_CHECKING:
    from gateway.services.billers import ValidatedBill
    from gateway.services.refunds import RefundService


class BillerDirectory(Protocol):
    """What the payment flow needs from the biller catalog (gateway.services.billers.BillerCatalog)."""

    def connector(self, biller_id: str) -> tuple[str, BillerConnector]: ...

    async def validate_payment(
        self,
        biller_id: str,
        customer_params: Mapping[str, object],
        amount: int,
        currency: str,
        bill_ref: str | None,
        *,
        tenant: str,
    ) -> ValidatedBill: ...


log = get_logger("gateway.bills")

# A posting the biller says it never received is sent again (same reference) from the second
# inquiry on (``tries`` counts inquiries): the first may overtake a request still in flight.
REPOST_AFTER_TRIES = 2
PENDING_RECHECK = 5.0  # seconds before the first status inquiry of a posting without an answer


def connector_supports_reversal(billers: list[BillerInfo], biller: str) -> bool:
    return any(info.id == biller and info.supports_reversal for info in billers)


def posting(status: Posting, *, reference: str | None = None, code: str | None = None) -> str:
    return orjson.dumps({"status": status.value, "biller_reference": reference, "code": code}).decode()


def collected_for_bill(decision: Decision, *, current: Status) -> Decision:
    """A bill payment's collected money is not a success yet: it stays processing until posted.

    ``current`` is the payment's status now: money collected asynchronously arrives while the
    payment is already ``processing``, so only its posting state moves (none → posting).
    """
    if decision.update.status != Status.SUCCEEDED or not decision.captured:
        return decision
    target = None if current == Status.PROCESSING else Status.PROCESSING
    update = dataclasses.replace(decision.update, status=target, bill_posting=posting(Posting.POSTING))
    return Decision(
        update,
        decision.attempt_status,
        "payment.processing",
        decision.captured,
        sources(Posting.POSTING),
        post_bill=True,
    )


class BillPoster:
    def __init__(
        self, pool: asyncpg.Pool, settler: Settler, directory: BillerDirectory, refunds: RefundService
    ) -> None:
        self._pool = pool
        self._settler = settler
        self._directory = directory
        self._refunds = refunds

    @property
    def directory(self) -> BillerDirectory:
        return self._directory

    async def post(self, tenant: str, payment_id: str, caller: Caller = HUB) -> Response:
        """Send a collected payment's posting (or send it again, same reference, after a crash)."""
        async with self._pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            assert row is not None
            attempt = await store.latest_attempt(conn, payment_id=payment_id, operation="post_bill")
            if attempt is None or attempt.status not in ("started", "pending", "unknown"):
                return await self._settler.current(conn, tenant, payment_id, caller)
            else:
                attempt_id = attempt.id
        if state_of(row.bill_posting) not in (Posting.POSTING, Posting.PENDING):
            async with self._pool.acquire() as conn:
                return await self._settler.current(conn, tenant, payment_id, caller)
        assert row.bill is not None
        assert row.biller is not None
        bill = orjson.loads(row.bill)
        amount, currency = bill_amount(row)
        _, connector = self._directory.connector(row.biller)
        try:
            result = await connector.pay(
                BillPayment(
                    attempt_id=attempt_id,
                    payment_id=payment_id,
                    biller=row.biller,
                    customer_params=bill["customer_params"],
                    amount=amount,
                    currency=currency,
                    bill_ref=bill.get("bill_ref"),
                )
            )
        except ConnectorError as exc:
            # Refused before anything was posted (bad params, window closed, unreachable) is a
            # rejection: the money goes back. No answer (or none we can trust) is pending: the
            # status inquiry settles it.
            result = (
                BillPosting(Outcome.FAILED, code=exc.code, message=str(exc) or None)
                if exc.outcome_known
                else BillPosting(Outcome.PENDING)
            )
        return await self.finish(tenant, payment_id, attempt_id, result, caller)

    async def resolve(self, attempt: Any, *, spent: bool) -> bool:
        """Settle a post (or reversal) attempt left unfinished; True when it has its next step.

        A post attempt still ``started`` (its request crashed) is sent again, same reference. An
        unknown one is asked about; a biller that answers it has no record of the reference (from
        the second inquiry on) gets it again, same reference: that answer proves nothing was
        posted. Once the connector's inquiry budget is ``spent`` the biller's terminal policy
        applies: a reversal (冲正) with the same reference where the biller supports it — reversed →
        the money goes back; reversal refused → the posting stood — otherwise the operators' manual
        queue. A reversal that gets no answer within its own budget goes to the manual queue too.
        """
        tenant, payment_id, biller = attempt.tenant, attempt.payment_id, attempt.connector
        if attempt.operation == "reverse_bill":
            if await self._reverse(tenant, payment_id, attempt.id, biller):
                return True
            return spent and await self._manual_review(
                tenant, payment_id, attempt.id, "reversal_unanswered", operation="reverse_bill"
            )
        if attempt.status == "started":
            await self.post(tenant, payment_id)
            return True
        _, connector = self._directory.connector(biller)
        try:
            result = await connector.status(attempt_id=attempt.id, biller=biller)
        except ConnectorError:
            # Unreachable: asked again later, until the budget is spent; then nothing can be
            # decided (not even a reversal can be sent), so an operator decides.
            return spent and await self._manual_review(tenant, payment_id, attempt.id, "biller_unreachable")
        if result.outcome is Outcome.PENDING:
            if result.code == REFERENCE_NOT_FOUND and attempt.tries >= REPOST_AFTER_TRIES:
                # The biller has no record of the posting (never received, or lost in a restart):
                # nothing happened there, so post again under the same reference.
                log.info("bill.repost", payment=payment_id, attempt=attempt.id, tries=attempt.tries)
                await self.post(tenant, payment_id)
                return True
            if not spent:
                return False
            try:
                reversible = connector_supports_reversal(await connector.describe(), biller)
            except ConnectorError:
                return False
            if not reversible:
                return await self._manual_review(tenant, payment_id, attempt.id, "posting_unknown")
            reversal_id = new_id("att")
            async with self._pool.acquire() as conn:
                await store.insert_attempt(
                    conn,
                    attempt_id=reversal_id,
                    payment_id=payment_id,
                    tenant=tenant,
                    operation="reverse_bill",
                    connector=biller,
                    amount=attempt.amount,
                )
            return await self._reverse(tenant, payment_id, reversal_id, biller)
        await self.finish(tenant, payment_id, attempt.id, result, HUB)
        return True

    async def _reverse(self, tenant: str, payment_id: str, reversal_id: str, biller: str) -> bool:
        """Send (again) the reversal of a posting whose outcome never became known."""
        async with self._pool.acquire() as conn:
            post = await store.latest_attempt(conn, payment_id=payment_id, operation="post_bill")
        assert post is not None
        _, connector = self._directory.connector(biller)
        try:
            reversal = await connector.reverse(attempt_id=post.id, biller=biller)
        except ConnectorError:
            return False  # asked again at the next pass, same reference
        if reversal.outcome is Outcome.PENDING:
            return False
        await self.reversal_answered(tenant, payment_id, reversal_id, post.id, reversal, caller=HUB)
        return True

    async def reversal_answered(
        self,
        tenant: str,
        payment_id: str,
        reversal_id: str,
        post_id: str,
        reversal: BillPosting,
        *,
        caller: Caller,
    ) -> Response:
        """A definite answer to a reversal: reversed → FAILED (the money goes back); refused →
        SUCCEEDED (the posting stood). From the biller, or from an operator (the manual queue)."""
        async with self._pool.acquire() as conn:
            await store.end_attempt(
                conn,
                attempt_id=reversal_id,
                status="succeeded" if reversal.outcome is Outcome.FAILED else "failed",
            )
        return await self.finish(tenant, payment_id, post_id, reversal, caller, reversed_=True)

    async def _manual_review(
        self, tenant: str, payment_id: str, attempt_id: str, reason: str, *, operation: str = "post_bill"
    ) -> bool:
        """No way to make the outcome definite automatically: the operators' manual queue, no more
        polling (a late answer from the biller still settles it). True: the next step is theirs."""
        log.warning("bill.manual_review", payment=payment_id, attempt=attempt_id, reason=reason)
        async with self._pool.acquire() as conn, conn.transaction():
            await self._settler.manual_review(
                conn,
                tenant,
                payment_id,
                attempt_id,
                reason=reason,
                operation=operation,
                posting=posting(Posting.MANUAL_REVIEW),
            )
        return True

    async def finish(
        self,
        tenant: str,
        payment_id: str,
        attempt_id: str,
        result: BillPosting,
        caller: Caller,
        *,
        reversed_: bool = False,
    ) -> Response:
        if result.outcome is Outcome.PENDING:
            return await self._pending(tenant, payment_id, attempt_id, caller)
        if result.outcome is Outcome.SUCCEEDED:
            decision = Decision(
                store.PaymentUpdate(
                    Status.SUCCEEDED, bill_posting=posting(Posting.POSTED, reference=result.biller_reference)
                ),
                "succeeded",
                "payment.succeeded",
                0,
                sources(Posting.POSTED),
            )
            async with self._pool.acquire() as conn, conn.transaction():
                return await self._settler.payment(
                    conn,
                    tenant,
                    payment_id,
                    attempt_id,
                    decision,
                    caller=caller,
                    action="bill.post",
                    extra_events=("bill.posted",),
                )
        return await self._give_back(tenant, payment_id, attempt_id, result, caller, reversed_=reversed_)

    async def _pending(self, tenant: str, payment_id: str, attempt_id: str, caller: Caller) -> Response:
        async with self._pool.acquire() as conn, conn.transaction():
            await store.mark_posting_pending(
                conn,
                tenant=tenant,
                payment_id=payment_id,
                attempt_id=attempt_id,
                posting=posting(Posting.PENDING),
                recheck_in=PENDING_RECHECK,
            )
            return await self._settler.current(conn, tenant, payment_id, caller)

    async def _give_back(
        self,
        tenant: str,
        payment_id: str,
        attempt_id: str,
        result: BillPosting,
        caller: Caller,
        *,
        reversed_: bool,
    ) -> Response:
        """The biller refused (or reversed): fail the payment and refund the collected money."""
        target = Posting.REVERSED if reversed_ else Posting.REJECTED
        refund_id: str | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            attempt_status = await store.lock_attempt_status(conn, attempt_id=attempt_id)
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id, lock=True)
            assert row is not None
            in_flight = attempt_status in ("started", "pending", "unknown")
            if not in_flight or state_of(row.bill_posting).value not in sources(target):
                return await self._settler.current(conn, tenant, payment_id, caller)
            if row.amount_captured > row.amount_refunded:
                refund_id = await self._refunds.start_return(conn, row, reason="biller_rejected")
            decision = Decision(
                store.PaymentUpdate(
                    Status.FAILED,
                    failure_code="biller_rejected",
                    failure_message=result.message
                    or f"The biller refused the payment ({result.code or 'rejected'}).",
                    bill_posting=posting(target, code=result.code),
                ),
                "failed",
                "payment.failed",
                0,
                sources(target),
            )
            outcome = await self._settler.payment(
                conn, tenant, payment_id, attempt_id, decision, caller=caller, action="bill.post"
            )
            if refund_id is not None and row.method == "balance":
                await self._settler.refund_outcome(
                    conn,
                    refund_id,
                    tenant=tenant,
                    status="succeeded",
                    reference=None,
                    failure=None,
                    caller=HUB,
                )
                refund_id = None
        if refund_id is not None:
            try:
                await self._refunds.run(tenant, refund_id)
            except Exception as exc:  # the refund is recorded: the resolver finishes it
                log.warning(
                    "bill.refund_deferred", payment=payment_id, refund=refund_id, error=type(exc).__name__
                )
        return outcome
