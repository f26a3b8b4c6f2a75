"""The message outbox (``notification_messages``): SMS and e-mail to customers about their events.

A message is queued in the transaction of its event (bill.due_soon by the reminder scheduler,
account.low_balance by the ledger trigger). The dispatcher claims due messages under a lease
(SKIP LOCKED, so several processes share the work), and for each one:

* the customer is in quiet hours now → ``not_before`` moves to their end (delayed, never dropped);
* else the body is rendered from the event (gateway.domain.notifications.message_body: amounts,
  dates and ids, never card data or secrets) and sent through the message sink;
* a failed send is retried with doubling back-off, and given up (``dead``) once the message is
  ``message_max_age`` old.

Delivery is at least once: a process that dies between the send and the commit leaves the message
to be sent again when its lease ends.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, Protocol

import asyncpg

from config.settings import NotificationSettings
from connectors.base import ConnectorError
from gateway.domain.notifications import DEFAULT_LOCALE, message_body, quiet_until, zone_of
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.services.reminders import Clock, utc_now
from gateway.store import reminders as store
from gateway.store.reminders import DueMessage

log = get_logger("gateway.messages")


class Sender(Protocol):
    """What sends a message (connectors.messages.client.MessageSender)."""

    async def send(self, to: str, channel: Literal["sms", "email", "push"], body: str) -> None: ...


class MessageDispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sender: Sender,
        settings: NotificationSettings,
        *,
        clock: Clock = utc_now,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._sender = sender
        self._metrics = metrics
        self.settings = settings
        self.clock = clock

    async def run_once(self) -> int:
        """Send what is due; returns how many messages were sent."""
        now = self.clock()
        lease_until = now + timedelta(seconds=self.settings.lease)
        async with self._pool.acquire() as conn:
            due = await store.claim_messages(
                conn, now=now, lease_until=lease_until, limit=self.settings.batch
            )
        sent = 0
        for message in due:
            sent += await self._deliver(message, now)
        return sent

    async def _deliver(self, message: DueMessage, now: datetime) -> int:
        prefs = message.preferences
        if prefs is not None:
            quiet_end = quiet_until(now, zone_of(prefs.timezone), prefs.quiet_hours)
            if quiet_end is not None:
                async with self._pool.acquire() as conn:
                    await store.message_deferred(conn, message_id=message.id, not_before=quiet_end)
                self._count(message.channel, "deferred")
                return 0
        locale = prefs.locale if prefs is not None else DEFAULT_LOCALE
        body = message_body(message.event_type, message.event_data, locale)
        channel: Literal["sms", "email"] = "sms" if message.channel == "sms" else "email"
        try:
            await self._sender.send(message.recipient, channel, body)
        except (ConnectorError, OSError, TimeoutError) as exc:
            await self._failed(message, now, type(exc).__name__)
            return 0
        async with self._pool.acquire() as conn:
            await store.message_sent(conn, message_id=message.id, body=body, now=self.clock())
        self._count(message.channel, "sent")
        return 1

    def _count(self, channel: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.notification_messages.labels(channel, outcome).inc()

    async def _failed(self, message: DueMessage, now: datetime, error: str) -> None:
        retry_at: datetime | None = now + timedelta(seconds=self._backoff(message.attempts))
        if retry_at is not None and retry_at - message.created > timedelta(
            seconds=self.settings.message_max_age
        ):
            retry_at = None
        log.warning(
            "messages.send_failed",
            message=message.id,
            channel=message.channel,
            attempts=message.attempts,
            error=error,
            dead=retry_at is None,
        )
        async with self._pool.acquire() as conn:
            await store.message_failed(conn, message_id=message.id, error=error, retry_at=retry_at)
        self._count(message.channel, "retry" if retry_at is not None else "dead")

    def _backoff(self, attempts: int) -> float:
        exponent = min(max(attempts - 1, 0), 30)
        return float(min(self.settings.message_retry * 2**exponent, self.settings.message_retry_cap))
