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

Every item is isolated: whatever one raises is logged, counted and retried later with back-off;
the pass goes on. Attempts are claimed with FOR UPDATE SKIP LOCKED and pushed forward, so any
number of gateway processes can run it without asking twice about the same attempt.
"""

from __future__ import annotations

import contextlib
import time
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
from gateway.store import payments as store

log = get_logger("gateway.resolver")

# Seconds before the next look at an attempt, by how many looks it had (then every 3 minutes).
BACKOFF = (1.0, 5.0, 15.0, 30.0, 60.0, 180.0)


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
    ) -> None:
        self._pool = pool
        self._payments = payments
        self._refunds = refunds
        self._bills = bills
        self._metrics = metrics
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

    async def _resolve(self, attempt: Any) -> bool:
        operation, started = attempt.operation, attempt.status == "started"
        if operation in ("post_bill", "reverse_bill"):
            return self._bills is not None and await self._bills.resolve(attempt)
        if operation == "refund":
            return attempt.refund_id is not None and await self._refunds.finish(
                attempt.tenant, attempt.refund_id
            )
        if started and operation in ("capture", "void"):
            async with self._pool.acquire() as conn:
                row = await store.get_payment(conn, tenant=attempt.tenant, payment_id=attempt.payment_id)
            assert row is not None
            # A void the processor refuses puts the payment back where it was: settled too.
            with contextlib.suppress(errors.Conflict):
                await self._payments.send_again(row, attempt)
            return True
        connector = self._payments.connector(attempt.connector)
        if connector is None:
            return False
        try:
            result = await connector.sync(attempt_id=attempt.id, operation=operation)
        except ConnectorError:
            return False  # unreachable right now: ask again later
        if result.outcome in (ConnectorOutcome.PENDING, ConnectorOutcome.REQUIRES_ACTION):
            return False
        await self._payments.settle_attempt(attempt.connector, attempt.id, result, action="payment.resolve")
        return True

    async def _later(self, attempt: Any) -> None:
        delay = BACKOFF[min(attempt.tries, len(BACKOFF) - 1)]
        async with self._pool.acquire() as conn:
            await store.recheck_later(conn, attempt_id=attempt.id, delay=delay)
