"""Background loops of notifications: the bill-reminder scheduler and the message sender.

Both never die: a failed pass is logged and the loop goes on at its interval. Each pass claims
its work with FOR UPDATE SKIP LOCKED under a lease, so every gateway process may run them.
"""

from __future__ import annotations

import asyncio

from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.services.messages import MessageDispatcher
from gateway.services.reminders import ReminderService

log = get_logger("gateway.workers.reminders")


async def run_reminders(service: ReminderService, interval: float, metrics: Metrics) -> None:
    """Check due bill reminders every ``interval`` seconds (DESIGN §10: claimed, never doubled)."""
    while True:
        try:
            result = await service.run_once()
            metrics.reminder_notices.labels("noticed").inc(result.noticed)
            metrics.reminder_notices.labels("check_failed").inc(result.failed)
            if result.noticed or result.failed:
                log.info(
                    "reminders.pass",
                    claimed=result.claimed,
                    noticed=result.noticed,
                    quiet=result.quiet,
                    failed=result.failed,
                )
        except Exception as exc:  # the loop never dies; the next pass tries again
            log.warning("reminders.pass_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)


async def run_messages(dispatcher: MessageDispatcher, interval: float) -> None:
    """Send due messages every ``interval`` seconds."""
    while True:
        try:
            await dispatcher.run_once()
        except Exception as exc:  # the loop never dies; the next pass tries again
            log.warning("messages.pass_failed", error=type(exc).__name__)
        await asyncio.sleep(interval)
