"""Bill payments: collect the money, then post the payment to the biller (DESIGN §6, §8).

The payment stays ``processing`` between collection and posting, and its captured money sits
in the biller's payable account. Posting answers:

* posted          → ``succeeded``, ``bill_posting.status = posted`` (+ ``bill.posted`` event);
* rejected        → the collected money goes back (a refund at the connector, or to the stored
                    balance) and the payment ends ``failed`` / ``biller_rejected``;
* no answer (yet) → ``bill_posting.status = pending``; the resolver asks the biller's status
                    inquiry with back-off until it is definite. Never posted twice: the attempt id
                    is the reference the biller de-duplicates on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from connectors.base import (
    BillerConnector,
    BillerInfo,
    BillPayment,
    BillPosting,
    ConnectorError,
    Outcome,
    OutcomeUnknown,
    PaymentConnector,
)
from gateway.domain.payment_state import Status
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.services.idempotent import KeyedRequest
from gateway.services.idempotent import Outcome as Response
from gateway.services.outcomes import Decision
from gateway.store import idempotency, ledger
from gateway.store import payments as store
from gateway.store.types import Connection
from gateway.views import render

if TYPE_CHECKING:
    from gateway.services.billers import ValidatedBill
    from gateway.services.payments import PaymentService


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


# Status inquiries before the terminal policy: with the resolver's back-off that is about an hour.
GIVE_UP_AFTER_TRIES = 25


def connector_supports_reversal(billers: list[BillerInfo], biller: str) -> bool:
    return any(info.id == biller and info.supports_reversal for info in billers)


def posting(status: str, *, reference: str | None = None, code: str | None = None) -> str:
    return orjson.dumps({"status": status, "biller_reference": reference, "code": code}).decode()


class BillPoster:
    def __init__(
        self, service: PaymentService, directory: BillerDirectory, connectors: Mapping[str, PaymentConnector]
    ) -> None:
        self._service = service
        self._directory = directory
        self._connectors = connectors

    @property
    def directory(self) -> BillerDirectory:
        return self._directory

    async def post(
        self,
        tenant: str,
        payment_id: str,
        *,
        keyed: KeyedRequest | None,
        actor: Identity | None,
        source: str | None,
    ) -> Response:
        """Post a collected payment to its biller (or resume a posting already started)."""
        pool = self._service.pool
        async with pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
            assert row is not None
            attempt = await store.latest_attempt(conn, payment_id=payment_id, operation="post_bill")
            if attempt is None:
                attempt_id = new_id("att")
                await store.insert_attempt(
                    conn,
                    attempt_id=attempt_id,
                    payment_id=payment_id,
                    tenant=tenant,
                    operation="post_bill",
                    connector=row["biller"],
                    amount=row["amount_captured"],
                )
            else:
                attempt_id = attempt["id"]
        bill = orjson.loads(row["bill"])
        _, connector = self._directory.connector(row["biller"])
        try:
            result = await connector.pay(
                BillPayment(
                    attempt_id=attempt_id,
                    payment_id=payment_id,
                    biller=row["biller"],
                    customer_params=bill["customer_params"],
                    amount=row["amount_captured"],
                    currency=row["currency"],
                    bill_ref=bill.get("bill_ref"),
                )
            )
        except OutcomeUnknown:
            result = BillPosting(Outcome.PENDING)
        except ConnectorError as exc:
            result = BillPosting(Outcome.FAILED, code=exc.code, message=str(exc) or None)
        return await self.finish(row, attempt_id, result, keyed=keyed, actor=actor, source=source)

    async def resolve(
        self, tenant: str, payment_id: str, attempt_id: str, biller: str, *, tries: int = 0
    ) -> bool:
        """Status inquiry for a posting whose outcome is unknown; True when it became definite.

        After ``GIVE_UP_AFTER_TRIES`` inquiries (about an hour of back-off) the biller's terminal
        policy applies: a reversal (冲正) with the same reference where the biller supports it —
        reversed → the money goes back; reversal refused → the posting stood, the payment succeeds —
        otherwise the posting goes to the operators' manual queue. Never a second posting.
        """
        _, connector = self._directory.connector(biller)
        try:
            result = await connector.status(attempt_id=attempt_id, biller=biller)
            if result.outcome is Outcome.PENDING and tries >= GIVE_UP_AFTER_TRIES:
                if connector_supports_reversal(await connector.describe(), biller):
                    reversal = await connector.reverse(attempt_id=attempt_id, biller=biller)
                    # reversed → FAILED (refund below); refused → SUCCEEDED (the posting stood)
                    result = reversal
                else:
                    await self._manual_review(tenant, payment_id, attempt_id)
                    return True
        except ConnectorError:
            return False
        if result.outcome is Outcome.PENDING:
            return False
        async with self._service.pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=tenant, payment_id=payment_id)
        if row is None or row["status"] != Status.PROCESSING:
            return False
        await self.finish(row, attempt_id, result, keyed=None, actor=None, source=None)
        return True

    async def _manual_review(self, tenant: str, payment_id: str, attempt_id: str) -> None:
        """No way to make the outcome definite automatically: park it for an operator, stop polling."""
        async with self._service.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE payment_attempts SET next_check = now() + interval '1 day' WHERE id = $1", attempt_id
            )
            await conn.execute(
                "UPDATE payments SET bill_posting = $3::jsonb WHERE id = $1 AND tenant = $2",
                payment_id,
                tenant,
                posting("manual_review"),
            )

    async def finish(
        self,
        row: Any,
        attempt_id: str,
        result: BillPosting,
        *,
        keyed: KeyedRequest | None,
        actor: Identity | None,
        source: str | None,
    ) -> Response:
        tenant, payment_id = row["tenant"], row["id"]
        if result.outcome is Outcome.PENDING:
            return await self._pending(row, attempt_id, keyed)
        if result.outcome is Outcome.SUCCEEDED:
            decision = Decision(
                store.PaymentUpdate(
                    Status.SUCCEEDED, bill_posting=posting("posted", reference=result.biller_reference)
                ),
                "succeeded",
                "payment.succeeded",
                0,
            )
            async with self._service.pool.acquire() as conn, conn.transaction():
                outcome = await self._service.apply_in(
                    conn,
                    tenant,
                    payment_id,
                    attempt_id,
                    decision,
                    connector=None,
                    currency=row["currency"],
                    keyed=keyed,
                    actor=actor,
                    source=source,
                    action="bill.post",
                )
                await self._event(conn, tenant, payment_id, "bill.posted", outcome.body)
            return outcome
        return await self._refund_rejected(row, attempt_id, result, keyed=keyed, actor=actor, source=source)

    async def _pending(self, row: Any, attempt_id: str, keyed: KeyedRequest | None) -> Response:
        tenant = row["tenant"]
        async with self._service.pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchrow(
                f"""
                WITH attempt AS (
                    UPDATE payment_attempts SET status = 'unknown', next_check = now() + interval '5 seconds'
                    WHERE id = $3 AND status IN ('started', 'pending', 'unknown')
                )
                UPDATE payments SET bill_posting = $4::jsonb WHERE id = $1 AND tenant = $2
                RETURNING {store.PAYMENT_COLUMNS}
                """,  # noqa: S608 - fixed column list
                row["id"],
                tenant,
                attempt_id,
                posting("pending"),
            )
            body = render.encode(render.payment(updated))
            if keyed is not None:
                await idempotency.finish(conn, tenant=tenant, key=keyed.key, status=200, body=body)
        return Response(200, body)

    async def _refund_rejected(
        self,
        row: Any,
        attempt_id: str,
        result: BillPosting,
        *,
        keyed: KeyedRequest | None,
        actor: Identity | None,
        source: str | None,
    ) -> Response:
        """The biller refused: give the collected money back, then fail the payment."""
        tenant, payment_id, currency = row["tenant"], row["id"], row["currency"]
        amount = row["amount_captured"]
        payable = ledger.SystemAccount(tenant, "biller_payable", row["biller"], currency)
        refund_id = new_id("re")
        back_to: ledger.AccountRef
        if row["method"] == "balance":
            back_to = orjson.loads(row["payment_method"])["balance"]["account"]
        else:
            connector = self._connectors[row["connector"]]
            await connector.refund(
                attempt_id=refund_id, reference=row["connector_reference"], amount=amount, currency=currency
            )
            back_to = ledger.SystemAccount(tenant, "connector_receivable", row["connector"], currency)
        code = "biller_rejected"
        decision = Decision(
            store.PaymentUpdate(
                Status.FAILED,
                failure_code=code,
                failure_message=result.message
                or f"The biller refused the payment ({result.code or 'rejected'}).",
                bill_posting=posting("rejected", code=result.code),
                amount_refunded=amount,
            ),
            "failed",
            "payment.failed",
            0,
        )
        async with self._service.pool.acquire() as conn, conn.transaction():
            await store.insert_refund(
                conn,
                refund_id=refund_id,
                tenant=tenant,
                payment_id=payment_id,
                amount=amount,
                currency=currency,
                reason=code,
                metadata="{}",
            )
            refunded = await store.finish_refund(
                conn,
                tenant=tenant,
                refund_id=refund_id,
                status="succeeded",
                reference=None,
                failure_code=None,
            )
            await ledger.post(
                conn,
                tenant=tenant,
                kind="bill_refund",
                moves=[ledger.Move(payable, back_to, amount, currency)],
                payment_id=payment_id,
                refund_id=refund_id,
            )
            outcome = await self._service.apply_in(
                conn,
                tenant,
                payment_id,
                attempt_id,
                decision,
                connector=None,
                currency=currency,
                keyed=keyed,
                actor=actor,
                source=source,
                action="bill.post",
            )
            await self._event(
                conn, tenant, refund_id, "refund.succeeded", render.encode(render.refund(refunded))
            )
        return outcome

    async def _event(self, conn: Connection, tenant: str, object_id: str, type_: str, body: bytes) -> None:
        await store.insert_event(
            conn, event_id=new_id("evt"), tenant=tenant, type_=type_, object_id=object_id, data=body.decode()
        )
