"""Refunds: never more than captured, whatever the concurrency, retries and crashes (DESIGN §7).

Phase 1, one transaction: reserve the amount on the payment row (a conditional UPDATE under the
row lock), record the refund and its attempt, hold the money in the ledger (a top-up's balance
that no longer holds it refuses the refund: 409), and set the key's recovery point. Phase 2 asks
the connector with the attempt id as its reference. Phase 3 (:mod:`gateway.services.settle`)
settles: the hold goes to the connector, or back. A retry with the same key resumes the same
refund and attempt; one nobody retries is finished by the resolver. Balance-funded payments are
refunded by a ledger move in phase 1.

The biller-rejection refund of a bill payment (``start_return``) is the same refund, started by
the bill flow inside its own transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import orjson

from connectors.base import ConnectorError, Outcome, PaymentConnector
from gateway import errors
from gateway.domain.ledger_rules import Funding, Movement, Result
from gateway.domain.money import MoneyError, check_amount
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.services.idempotent import KeyedRequest, run_idempotent
from gateway.services.idempotent import Outcome as Response
from gateway.services.inputs import metadata_text, refuse_card_numbers
from gateway.services.settle import HUB, Caller, Settler, book, funding_of
from gateway.store import idempotency, ledger
from gateway.store import payments as store
from gateway.store.idempotency import Claimed
from gateway.store.types import Connection
from gateway.views import render, schemas

RECOVERY_REFUND_STARTED = "refund_started"


class RefundService:
    def __init__(
        self, pool: asyncpg.Pool, connectors: Mapping[str, PaymentConnector], settler: Settler
    ) -> None:
        self._pool = pool
        self._connectors = connectors
        self._settler = settler

    async def create(
        self, identity: Identity, params: schemas.CreateRefundRequest, keyed: KeyedRequest, source: str | None
    ) -> Response:
        if params.amount is not None:
            try:
                check_amount(params.amount)
            except MoneyError as exc:
                raise errors.InvalidRequest(str(exc), param="amount") from exc
        refuse_card_numbers(metadata_text(params.metadata))
        caller = Caller(identity, source, keyed)

        async def work(claim: Claimed) -> Response:
            if claim.recovery_point == RECOVERY_REFUND_STARTED and claim.object_id:
                return await self.run(identity.tenant, claim.object_id, caller)  # resume, same attempt
            return await self._create(identity, params, caller)

        return await run_idempotent(self._pool, keyed, work)

    async def _create(
        self, identity: Identity, params: schemas.CreateRefundRequest, caller: Caller
    ) -> Response:
        tenant = identity.tenant
        assert caller.keyed is not None
        async with self._pool.acquire() as conn, conn.transaction():
            payment = await store.get_payment(conn, tenant=tenant, payment_id=params.payment, lock=True)
            if payment is None:
                raise errors.NotFound(f"No such payment: '{params.payment}'.", param="payment")
            if payment.biller is not None:
                # The money went on to the biller: giving it back takes the biller's reversal, not a
                # refund of the card (a rejected or reversed posting is refunded automatically).
                raise errors.Conflict(
                    "A bill payment posted to its biller cannot be refunded here.",
                    code="bill_payment_not_refundable",
                )
            refundable = payment.amount_captured - payment.amount_refunded
            amount = params.amount if params.amount is not None else refundable
            if payment.status != "succeeded" or refundable <= 0:
                raise errors.Conflict(
                    f"This payment cannot be refunded: its status is {payment.status} "
                    f"and {refundable} is left to refund.",
                    code="charge_not_refundable",
                )
            refund_id = await self._start(
                conn,
                payment,
                amount=amount,
                reason=params.reason,
                metadata=orjson.dumps(params.metadata).decode(),
                statuses=("succeeded",),
                on_too_much=lambda: errors.InvalidRequest(
                    f"Refund amount ({amount}) is greater than the unrefunded amount ({refundable}).",
                    code="amount_too_large",
                    param="amount",
                ),
            )
            if funding_of(payment) is Funding.BALANCE:
                return await self._settler.refund_outcome(
                    conn,
                    refund_id,
                    tenant=tenant,
                    status="succeeded",
                    reference=None,
                    failure=None,
                    caller=caller,
                )
            await idempotency.set_recovery_point(
                conn, tenant=tenant, key=caller.keyed.key, point=RECOVERY_REFUND_STARTED, object_id=refund_id
            )
        return await self.run(tenant, refund_id, caller)

    async def start_return(self, conn: Connection, payment: Any, *, reason: str) -> str:
        """Phase 1 of giving a bill payment's collected money back (the biller refused or reversed it),
        inside the caller's transaction. Returns the refund id; call :meth:`run` after commit."""
        amount = payment.amount_captured - payment.amount_refunded
        return await self._start(
            conn,
            payment,
            amount=amount,
            reason=reason,
            metadata="{}",
            statuses=("processing", "failed", "succeeded"),
            on_too_much=lambda: errors.Conflict(
                "Nothing is left to give back.", code="charge_not_refundable"
            ),
        )

    async def _start(
        self,
        conn: Connection,
        payment: Any,
        *,
        amount: int,
        reason: str | None,
        metadata: str,
        statuses: Sequence[str],
        on_too_much: Any,
    ) -> str:
        tenant, payment_id, currency = payment.tenant, payment.id, payment.currency
        refund_id = new_id("re")
        reserved = await store.reserve_refund(
            conn, tenant=tenant, payment_id=payment_id, amount=amount, statuses=statuses
        )
        if reserved is None:
            raise on_too_much()
        await store.insert_refund(
            conn,
            refund_id=refund_id,
            tenant=tenant,
            payment_id=payment_id,
            amount=amount,
            currency=currency,
            reason=reason,
            metadata=metadata,
        )
        direct = funding_of(payment) is Funding.BALANCE
        try:
            async with conn.transaction():  # savepoint: a balance that no longer holds it refuses
                await book(
                    conn,
                    payment,
                    Movement.REFUND,
                    Result.DIRECT if direct else Result.RESERVED,
                    amount,
                    refund_id=refund_id,
                )
        except ledger.InsufficientFunds as exc:
            raise errors.Conflict(
                "The balance this top-up funded no longer holds the amount to refund.",
                code="balance_insufficient",
            ) from exc
        if not direct:
            await store.insert_attempt(
                conn,
                attempt_id=new_id("att"),
                payment_id=payment_id,
                tenant=tenant,
                operation="refund",
                connector=payment.connector,
                amount=amount,
                refund_id=refund_id,
            )
        return refund_id

    async def run(self, tenant: str, refund_id: str, caller: Caller = HUB) -> Response:
        """Phases 2 and 3 of a recorded refund: ask the connector (same attempt id), settle.

        Safe to repeat (a retry, the resolver): the connector de-duplicates on the attempt id and
        a refund that is no longer pending is answered as it stands.
        """
        async with self._pool.acquire() as conn:
            refund = await store.get_refund(conn, tenant=tenant, refund_id=refund_id)
            attempt = await store.refund_attempt(conn, refund_id=refund_id)
            payment = (
                await store.get_payment(conn, tenant=tenant, payment_id=refund.payment_id) if refund else None
            )
        if refund is None or payment is None:
            raise errors.NotFound(f"No such refund: '{refund_id}'.", param="id")
        if refund.status != "pending" or attempt is None:
            return await self._answer(tenant, refund_id, caller)
        try:
            result = await self._connectors[attempt.connector].refund(
                attempt_id=attempt.id,
                reference=payment.connector_reference or "",
                amount=refund.amount,
                currency=refund.currency,
            )
        except ConnectorError as exc:
            # Unknown outcome: stays pending (the amount stays held) until the resolver knows.
            status = "failed" if exc.outcome_known else "pending"
            reference, failure = None, exc.code if exc.outcome_known else None
        else:
            status, reference, failure = _refund_status(result.outcome, result.reference, result.decline_code)
        return await self.settle(
            tenant, refund_id, status=status, reference=reference, failure=failure, caller=caller
        )

    async def settle(
        self,
        tenant: str,
        refund_id: str,
        *,
        status: str,
        reference: str | None,
        failure: str | None,
        caller: Caller = HUB,
    ) -> Response:
        async with self._pool.acquire() as conn, conn.transaction():
            if status == "pending":
                await store.settle_refund_attempt(
                    conn, refund_id=refund_id, status="pending", reference=reference
                )
                return await self._answer_in(conn, tenant, refund_id, caller)
            outcome = await self._settler.refund(
                conn,
                refund_id,
                tenant=tenant,
                status=status,
                reference=reference,
                failure=failure,
                caller=caller,
            )
            return outcome or await self._answer_in(conn, tenant, refund_id, caller)

    async def finish(self, tenant: str, refund_id: str) -> bool:
        """The resolver's turn at a refund left pending: send it again (same attempt id); True once final.

        Sent again rather than asked about: every processor de-duplicates a refund on its
        reference and answers a repeat with its first answer, and not all of them answer inquiries.
        """
        await self.run(tenant, refund_id)
        async with self._pool.acquire() as conn:
            refund = await store.get_refund(conn, tenant=tenant, refund_id=refund_id)
        return refund is not None and refund.status != "pending"

    async def _answer(self, tenant: str, refund_id: str, caller: Caller) -> Response:
        async with self._pool.acquire() as conn:
            return await self._answer_in(conn, tenant, refund_id, caller)

    async def _answer_in(self, conn: Connection, tenant: str, refund_id: str, caller: Caller) -> Response:
        """The refund as it stands, stored as the caller's response."""
        row = await store.get_refund(conn, tenant=tenant, refund_id=refund_id)
        assert row is not None
        body = render.encode(render.refund(row))
        if caller.keyed is not None:
            await idempotency.finish(conn, tenant=tenant, key=caller.keyed.key, status=200, body=body)
        return Response(200, body)


def _refund_status(
    outcome: Outcome, reference: str | None, decline: str | None
) -> tuple[str, str | None, str | None]:
    if outcome is Outcome.SUCCEEDED:
        return "succeeded", reference, None
    if outcome is Outcome.FAILED:
        return "failed", reference, decline or "refund_failed"
    return "pending", reference, None
