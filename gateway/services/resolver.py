"""The resolver: settles every attempt left unfinished, whatever its operation (DESIGN §7).

An attempt is due when its ``next_check`` passes: a ``pending``/``unknown`` one at its back-off, a
``started`` one once the request that wrote it has had time to finish (a crash, a time-out or a
cancelled request leaves it there). Per operation:

    authorize            status inquiry (sync); a processor that never received it answers "failed"
    capture, void        pending/unknown: status inquiry; started: sent again, same attempt id
    refund               sent again, same attempt id (processors de-duplicate refunds on it and
                         answer a repeat with the first answer; not all answer refund inquiries)
    post_bill            unknown: the biller's status inquiry, then its terminal policy; started: sent again
    reverse_bill         sent again until the biller answers

Nothing is polled forever (issue #16, docs/faults.md). Each connector has an inquiry budget
(``[connectors.<name>] inquiry_budget`` inquiries or ``inquiry_max_age`` seconds since the attempt was
made, whichever comes first). When it is spent with the outcome still unknown, the terminal policy:

    authorize, bank transfer or wallet   cancel it at the connector, same reference (the payer never
                                         paid); the connector's confirmation proves nothing moved
    post_bill                            the biller's reversal (冲正), same reference (bills.py)
    anything else, or a policy that      the manual queue: no more polling, a ``payment.manual_review``
    cannot get an answer either          event, the payhub_manual_review_attempts gauge and its alert

Every item is isolated: whatever one raises is logged, counted and retried later with back-off;
the pass goes on. Attempts are claimed with FOR UPDATE SKIP LOCKED and pushed forward, so any
number of gateway processes can run it without asking twice about the same attempt.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from connectors.base import ConnectorError
from connectors.base import Outcome as ConnectorOutcome
from gateway import errors
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.services.bills import BillPoster
from gateway.services.payments import PaymentService
from gateway.services.refunds import RefundService
from gateway.services.settle import Settler
from gateway.store import payments as store

log = get_logger("gateway.resolver")

# Seconds before the next look at an attempt, by how many looks it had (then every 3 minutes).
BACKOFF = (1.0, 5.0, 15.0, 30.0, 60.0, 180.0)
# Payment methods whose pending authorization is the payer's to complete: cancelled when the budget
# is spent (a bank transfer never sent, a wallet order never paid).
CANCEL_WHEN_SPENT = frozenset({"bank_transfer", "wallet"})


@dataclass(frozen=True)
class Budget:
    """How long an unknown outcome is asked about before the terminal policy (per connector)."""

    inquiries: int = 25  # with BACKOFF, about an hour
    max_age: float = 3600.0  # seconds since the attempt was made

    def spent(self, attempt: store.Attempt) -> bool:
        return attempt.tries >= self.inquiries or attempt.age >= self.max_age


@dataclass
class ResolverHealth:
    """What /readyz and the metrics say about the resolver."""

    last_pass: float = field(default_factory=time.monotonic)  # monotonic time of the last completed pass
    failures: int = 0  # items that raised, since start

    def passed(self) -> None:
        self.last_pass = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last_pass


class Resolver:
    def __init__(
        self,
        pool: asyncpg.Pool,
        payments: PaymentService,
        refunds: RefundService,
        bills: BillPoster | None,
        metrics: Metrics,
        *,
        settler: Settler,
        budgets: Mapping[str, Budget] | None = None,
    ) -> None:
        self._pool = pool
        self._payments = payments
        self._refunds = refunds
        self._bills = bills
        self._settler = settler
        self._metrics = metrics
        self.budgets = dict(budgets or {})
        self.health = ResolverHealth()

    async def resolve_due(self, *, limit: int = 50) -> int:
        """One pass over the attempts due now; returns how many were looked at."""
        async with self._pool.acquire() as conn:
            due = await store.claim_due_attempts(conn, limit=limit)
        for attempt in due:
            try:
                settled = await self._resolve(attempt)
            except Exception as exc:
                self.health.failures += 1
                self._metrics.resolver_items.labels(attempt.operation, "error").inc()
                log.warning(
                    "resolver.item_failed",
                    attempt=attempt.id,
                    operation=attempt.operation,
                    error=type(exc).__name__,
                )
                settled = False
            else:
                self._metrics.resolver_items.labels(
                    attempt.operation, "settled" if settled else "later"
                ).inc()
            if not settled:
                await self._later(attempt)
        self.health.passed()
        return len(due)

    async def oldest_processing_age(self) -> float:
        """Seconds the longest-waiting ``processing`` payment has not moved (0: none), for the metrics."""
        async with self._pool.acquire() as conn:
            return await store.oldest_processing_age(conn)

    async def manual_review_size(self) -> int:
        """Attempts waiting in the manual queue, for the gauge."""
        async with self._pool.acquire() as conn:
            return await store.manual_review_size(conn)

    def budget(self, attempt: store.Attempt) -> Budget:
        connector = attempt.connector
        if attempt.operation in ("post_bill", "reverse_bill") and self._bills is not None:
            connector, _ = self._bills.directory.connector(attempt.connector)  # the biller's connector
        return self.budgets.get(connector, Budget())

    async def _resolve(self, attempt: store.Attempt) -> bool:
        operation, started = attempt.operation, attempt.status == "started"
        spent = self.budget(attempt).spent(attempt)
        if operation in ("post_bill", "reverse_bill"):
            return self._bills is not None and await self._bills.resolve(attempt, spent=spent)
        if operation == "refund":
            if attempt.refund_id is not None and await self._refunds.finish(
                attempt.tenant, attempt.refund_id
            ):
                return True
            return spent and await self.manual_review(attempt, "refund_unanswered")
        if started and operation in ("capture", "void"):
            async with self._pool.acquire() as conn:
                row = await store.get_payment(conn, tenant=attempt.tenant, payment_id=attempt.payment_id)
            assert row is not None
            # A void the processor refuses puts the payment back where it was: settled too.
            with contextlib.suppress(errors.Conflict):
                await self._payments.send_again(row, attempt)
            return True
        if self._payments.connector(attempt.connector) is None:  # removed from the config since
            return spent and await self.manual_review(attempt, "connector_unknown")
        if await self._settled_by_inquiry(attempt):
            return True
        return spent and await self._spent(attempt)  # else asked again later, within the budget

    async def _spent(self, attempt: store.Attempt) -> bool:
        """The terminal policy of an attempt whose budget is spent, the outcome still unknown."""
        async with self._pool.acquire() as conn:
            row = await store.get_payment(conn, tenant=attempt.tenant, payment_id=attempt.payment_id)
            cancel = await store.latest_attempt(conn, payment_id=attempt.payment_id, operation="void")
        assert row is not None
        if attempt.operation != "authorize" or row.method not in CANCEL_WHEN_SPENT:
            return await self.manual_review(attempt, "outcome_unknown")
        if cancel is not None:
            # A cancel was sent before and did not end the payment (no answer, or refused): one
            # cancel per payment, then an operator; never a new cancel attempt every pass.
            return await self.manual_review(attempt, "cancel_unanswered")
        try:
            return await self._payments.expire(attempt)
        except errors.Conflict:
            # Refused: the payer paid meanwhile (the inquiry says so now) or it cannot be cancelled.
            if await self._settled_by_inquiry(attempt):
                return True
            return await self.manual_review(attempt, "cancel_refused")
        except errors.Unavailable:
            return await self.manual_review(attempt, "cancel_unanswered")

    async def _settled_by_inquiry(self, attempt: store.Attempt) -> bool:
        connector = self._payments.connector(attempt.connector)
        if connector is None:
            return False
        try:
            result = await connector.sync(attempt_id=attempt.id, operation=attempt.operation)
        except ConnectorError:
            return False
        if result.outcome in (ConnectorOutcome.PENDING, ConnectorOutcome.REQUIRES_ACTION):
            return False
        await self._payments.settle_attempt(attempt.connector, attempt.id, result, action="payment.resolve")
        return True

    async def manual_review(self, attempt: store.Attempt, reason: str, posting: str | None = None) -> bool:
        """Stop polling; an operator decides (a late definite answer still settles it). Always True:
        the attempt has its next step, which is not the resolver's."""
        async with self._pool.acquire() as conn, conn.transaction():
            await self._settler.manual_review(
                conn,
                attempt.tenant,
                attempt.payment_id,
                attempt.id,
                reason=reason,
                operation=attempt.operation,
                posting=posting,
            )
        log.warning(
            "resolver.manual_review",
            payment=attempt.payment_id,
            attempt=attempt.id,
            operation=attempt.operation,
            reason=reason,
            tries=attempt.tries,
        )
        return True

    async def _later(self, attempt: Any) -> None:
        delay = BACKOFF[min(attempt.tries, len(BACKOFF) - 1)]
        async with self._pool.acquire() as conn:
            await store.recheck_later(conn, attempt_id=attempt.id, delay=delay)
