"""Refunds: never more than captured, whatever the concurrency (DESIGN §7).

Phase 1 reserves the amount on the payment row (a conditional UPDATE under the row lock) and
records the refund and its attempt; phase 2 asks the connector; phase 3 settles: a failed
refund gives the reserved amount back. Stored-balance payments are refunded by a ledger move.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from connectors.base import ConnectorError, Outcome, PaymentConnector
from gateway import errors
from gateway.domain.money import MoneyError, check_amount
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.services.idempotent import KeyedRequest, run_idempotent
from gateway.services.idempotent import Outcome as Response
from gateway.services.payments import record_and_log, refuse_card_numbers
from gateway.store import idempotency, ledger
from gateway.store import payments as store
from gateway.store.idempotency import Claimed
from gateway.store.outcomes import OutcomeRecord
from gateway.store.types import Connection
from gateway.views import render, schemas


@dataclass(frozen=True, slots=True)
class Settlement:
    """Which refund an answer is about (and where its money goes in the ledger)."""

    tenant: str
    payment_id: str
    refund_id: str
    attempt_id: str
    connector: str
    amount: int
    currency: str


class RefundService:
    def __init__(self, pool: asyncpg.Pool, connectors: Mapping[str, PaymentConnector]) -> None:
        self._pool = pool
        self._connectors = connectors

    async def create(
        self, identity: Identity, params: schemas.CreateRefundRequest, keyed: KeyedRequest, source: str | None
    ) -> Response:
        if params.amount is not None:
            try:
                check_amount(params.amount)
            except MoneyError as exc:
                raise errors.InvalidRequest(str(exc), param="amount") from exc

        refuse_card_numbers({f"metadata.{k}": f"{k} {v}" for k, v in params.metadata.items()})

        async def work(claim: Claimed) -> Response:
            return await self._create(identity, params, claim=claim, keyed=keyed, source=source)

        return await run_idempotent(self._pool, keyed, work)

    async def _create(
        self,
        identity: Identity,
        params: schemas.CreateRefundRequest,
        *,
        claim: Claimed,
        keyed: KeyedRequest,
        source: str | None,
    ) -> Response:
        tenant = identity.tenant
        refund_id, attempt_id = new_id("re"), new_id("att")
        async with self._pool.acquire() as conn, conn.transaction():
            payment = await store.get_payment(conn, tenant=tenant, payment_id=params.payment)
            if payment is None:
                raise errors.NotFound(f"No such payment: '{params.payment}'.", param="payment")
            if payment["biller"] is not None:
                # The money went on to the biller: giving it back takes the biller's reversal, not a
                # refund of the card (a rejected or reversed posting is refunded automatically).
                raise errors.Conflict(
                    "A bill payment posted to its biller cannot be refunded here.",
                    code="bill_payment_not_refundable",
                )
            refundable = payment["amount_captured"] - payment["amount_refunded"]
            amount = params.amount if params.amount is not None else refundable
            if payment["status"] != "succeeded" or refundable <= 0:
                raise errors.Conflict(
                    f"This payment cannot be refunded: its status is {payment['status']} "
                    f"and {refundable} is left to refund.",
                    code="charge_not_refundable",
                )
            reserved = await store.reserve_refund(
                conn, tenant=tenant, payment_id=params.payment, amount=amount
            )
            if reserved is None:
                raise errors.InvalidRequest(
                    f"Refund amount ({amount}) is greater than the unrefunded amount ({refundable}).",
                    code="amount_too_large",
                    param="amount",
                )
            currency = payment["currency"]
            await store.insert_refund(
                conn,
                refund_id=refund_id,
                tenant=tenant,
                payment_id=params.payment,
                amount=amount,
                currency=currency,
                reason=params.reason,
                metadata=orjson.dumps(params.metadata).decode(),
            )
            if payment["method"] == "balance":
                # Money goes straight back to the stored balance: the ledger move is the refund.
                account = orjson.loads(payment["payment_method"])["balance"]["account"]
                clearing = ledger.SystemAccount(tenant, "tenant_clearing", "default", currency)
                await ledger.post(
                    conn,
                    tenant=tenant,
                    kind="refund",
                    moves=[ledger.Move(clearing, account, amount, currency)],
                    payment_id=params.payment,
                    refund_id=refund_id,
                )
                return await self._settle(
                    conn,
                    refund_id,
                    status="succeeded",
                    reference=None,
                    failure=None,
                    keyed=keyed,
                    identity=identity,
                    source=source,
                )
            await store.insert_attempt(
                conn,
                attempt_id=attempt_id,
                payment_id=params.payment,
                tenant=tenant,
                operation="refund",
                connector=payment["connector"],
                amount=amount,
                refund_id=refund_id,
            )
            await idempotency.set_recovery_point(
                conn, tenant=tenant, key=keyed.key, point="attempt_created", object_id=refund_id
            )
        connector_name = payment["connector"]
        reference: str | None
        failure: str | None
        try:
            result = await self._connectors[connector_name].refund(
                attempt_id=attempt_id,
                reference=payment["connector_reference"],
                amount=amount,
                currency=currency,
            )
        except ConnectorError as exc:
            # Unknown outcome: stays pending (the reserved amount stays reserved) until resolved.
            status = "failed" if exc.outcome_known else "pending"
            reference, failure = None, exc.code if exc.outcome_known else None
        else:
            succeeded = result.outcome is Outcome.SUCCEEDED
            failed = result.outcome is Outcome.FAILED
            status = "succeeded" if succeeded else "failed" if failed else "pending"
            reference, failure = result.reference, result.decline_code if failed else None
        async with self._pool.acquire() as conn, conn.transaction():
            return await self._apply(
                conn,
                Settlement(tenant, params.payment, refund_id, attempt_id, connector_name, amount, currency),
                status=status,
                reference=reference,
                failure=failure,
                keyed=keyed,
                identity=identity,
                source=source,
            )

    async def resolve(self, attempt: Any) -> bool:
        """Status inquiry for a refund whose outcome was unknown; True when it became definite."""
        connector = self._connectors.get(attempt["connector"])
        if connector is None or attempt["refund_id"] is None:
            return False
        try:
            result = await connector.sync(attempt_id=attempt["id"], operation="refund")
        except ConnectorError:
            return False
        if result.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
            return False
        async with self._pool.acquire() as conn, conn.transaction():
            refund = await conn.fetchrow(
                "SELECT currency, status FROM refunds WHERE id = $1 FOR UPDATE", attempt["refund_id"]
            )
            if refund is None or refund["status"] != "pending":
                return False  # settled meanwhile
            succeeded = result.outcome is Outcome.SUCCEEDED
            await self._apply(
                conn,
                Settlement(
                    attempt["tenant"],
                    attempt["payment_id"],
                    attempt["refund_id"],
                    attempt["id"],
                    attempt["connector"],
                    attempt["amount"],
                    refund["currency"],
                ),
                status="succeeded" if succeeded else "failed",
                reference=result.reference,
                failure=None if succeeded else result.decline_code or "refund_failed",
                keyed=None,
                identity=None,
                source=None,
            )
        return True

    async def _apply(
        self,
        conn: Connection,
        refund: Settlement,
        *,
        status: str,
        reference: str | None,
        failure: str | None,
        keyed: KeyedRequest | None,
        identity: Identity | None,
        source: str | None,
    ) -> Response:
        """Ledger for a refund that happened, the reserved amount back for one that did not."""
        if status == "succeeded":
            await ledger.post(
                conn,
                tenant=refund.tenant,
                kind="refund",
                moves=[
                    ledger.Move(
                        ledger.SystemAccount(refund.tenant, "tenant_clearing", "default", refund.currency),
                        ledger.SystemAccount(
                            refund.tenant, "connector_receivable", refund.connector, refund.currency
                        ),
                        refund.amount,
                        refund.currency,
                    )
                ],
                payment_id=refund.payment_id,
                refund_id=refund.refund_id,
            )
        elif status == "failed":
            await store.release_refund(
                conn, tenant=refund.tenant, payment_id=refund.payment_id, amount=refund.amount
            )
        else:  # unknown: keep the amount reserved; the resolver asks the connector
            await store.mark_unknown(conn, attempt_id=refund.attempt_id)
        return await self._settle(
            conn,
            refund.refund_id,
            status=status,
            reference=reference,
            failure=failure,
            keyed=keyed,
            identity=identity,
            source=source,
            tenant=refund.tenant,
        )

    async def _settle(
        self,
        conn: Connection,
        refund_id: str,
        *,
        status: str,
        reference: str | None,
        failure: str | None,
        keyed: KeyedRequest | None,
        identity: Identity | None,
        source: str | None,
        tenant: str | None = None,
    ) -> Response:
        tenant = tenant or (identity.tenant if identity else "")
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
                actor=identity.spiffe_id if identity else "payhub",
                action="refund.create" if keyed else "refund.resolve",
                outcome=status,
                source=source,
                details={"payment": row["payment_id"], "amount": row["amount"], "currency": row["currency"]},
                idempotency_key=keyed.key if keyed else None,
            ),
        )
        return Response(200, body)
