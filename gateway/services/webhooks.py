"""Webhooks: endpoints (the API's side) and the delivery of the outbox (the worker's side).

Every event is written with its change; the ``events_webhook_fanout`` trigger adds one delivery per
subscribed endpoint in that same transaction (gateway/store/webhooks.py). :class:`Dispatcher`
sends them: it claims due deliveries (lease + attempt number in one statement, so any number of
processes can run it), POSTs the event as ``GET /v1/events/{id}`` renders it, signed with every
valid secret of the endpoint, and records the answer: a 2xx is delivered, anything else is retried
with back-off (gateway/domain/webhook_backoff.py) until the delivery's deadline, then dead.

The HTTP side is a seam, :class:`Transport` (gateway/workers/webhooks.py implements it with
aiohttp and a resolver that refuses private addresses): services never import aiohttp.

    Exception
     └── DeliveryFailed     no HTTP answer: time-out, connection error, refused address. ``reason``
                            is short, fixed text, safe to store and log.

Secrets: shown once (creation, rotation), stored sealed (crypto/webhook_secrets.py), opened only
to sign; neither a secret nor a signature is ever logged, audited or stored in clear.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from config.settings import WebhookSettings
from crypto.keyring import KeyringError
from crypto.signatures import sign_webhook
from crypto.webhook_secrets import SealedSecret, SecretError, new_webhook_secret, open_secret, seal_secret
from gateway import audit, errors
from gateway.domain.event_types import ALL_EVENTS
from gateway.domain.webhook_backoff import backoff_delay
from gateway.domain.webhook_urls import UnsafeUrl, check_url
from gateway.identity import Identity
from gateway.ids import new_id
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.store import events as event_store
from gateway.store import webhooks as store
from gateway.store.keyring import KeyringCache
from gateway.views import events as views

log = get_logger("gateway.webhooks")

ENDPOINT_PREFIX = "we"
# The dead-letter gauge is a count over the table: refreshed this often, not every pass.
DEAD_COUNT_INTERVAL = 15.0
LAG_INTERVAL = 1.0  # the outbox lag gauge is refreshed at most this often (one query)
MAX_ERROR_TEXT = 200


# ---- endpoints -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointWithSecret:
    """An endpoint and its new signing secret: the one time the secret is shown."""

    endpoint: store.Endpoint
    secret: str


class Endpoints:
    """Create, read, delete and rotate a tenant's webhook endpoints; redeliver its events."""

    def __init__(
        self, pool: asyncpg.Pool, keyring: KeyringCache, settings: WebhookSettings, *, dev_mode: bool
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._settings = settings
        self._dev_mode = dev_mode

    async def create(
        self,
        identity: Identity,
        *,
        url: str,
        enabled_events: Sequence[str],
        description: str | None,
        source: str | None,
    ) -> EndpointWithSecret:
        try:
            check_url(url, dev_mode=self._dev_mode)
        except UnsafeUrl as exc:
            raise errors.InvalidRequest(str(exc), code="url_invalid", param="url") from exc
        events = list(dict.fromkeys(enabled_events))  # order kept, repeats dropped
        if ALL_EVENTS in events:
            events = [ALL_EVENTS]
        endpoint_id = new_id(ENDPOINT_PREFIX)
        secret = new_webhook_secret()
        async with self._pool.acquire() as conn:
            keyring = await self._keyring.current(conn)
            sealed = seal_secret(keyring, tenant=identity.tenant, endpoint_id=endpoint_id, secret=secret)
            async with conn.transaction():
                endpoint = await store.insert_endpoint(
                    conn,
                    endpoint_id=endpoint_id,
                    tenant=identity.tenant,
                    url=url,
                    enabled_events=events,
                    description=description,
                    secret=sealed,
                    retry_window=self._settings.retry_window,
                )
                await audit.record(
                    conn,
                    actor=identity.spiffe_id,
                    action="webhook_endpoint.create",
                    outcome="success",
                    tenant=identity.tenant,
                    source=source,
                    object_id=endpoint_id,
                    details={"url": url, "enabled_events": events},
                )
        return EndpointWithSecret(endpoint, secret)

    async def get(self, tenant: str, endpoint_id: str) -> store.Endpoint:
        async with self._pool.acquire() as conn:
            endpoint = await store.get_endpoint(conn, tenant=tenant, endpoint_id=endpoint_id)
        if endpoint is None:
            raise _no_such_endpoint(endpoint_id, "id")
        return endpoint

    async def page(
        self, tenant: str, *, limit: int, starting_after: str | None, ending_before: str | None
    ) -> tuple[list[store.Endpoint], bool]:
        async with self._pool.acquire() as conn:
            endpoints, has_more = await store.list_endpoints(
                conn, tenant=tenant, limit=limit, starting_after=starting_after, ending_before=ending_before
            )
            cursor = starting_after or ending_before
            if (
                cursor is not None
                and not endpoints
                and not await store.endpoint_exists(conn, tenant=tenant, endpoint_id=cursor)
            ):
                raise _no_such_endpoint(cursor, "starting_after" if starting_after else "ending_before")
        return endpoints, has_more

    async def delete(self, identity: Identity, endpoint_id: str, *, source: str | None) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if not await store.delete_endpoint(conn, tenant=identity.tenant, endpoint_id=endpoint_id):
                raise _no_such_endpoint(endpoint_id, "id")
            await audit.record(
                conn,
                actor=identity.spiffe_id,
                action="webhook_endpoint.delete",
                outcome="success",
                tenant=identity.tenant,
                source=source,
                object_id=endpoint_id,
            )

    async def rotate(
        self, identity: Identity, endpoint_id: str, *, expires_in: float | None, source: str | None
    ) -> EndpointWithSecret:
        """A new secret; the old one keeps signing too for ``expires_in`` seconds (default: the
        configured rotation overlap; 0: it stops now)."""
        overlap = self._settings.rotation_overlap if expires_in is None else expires_in
        secret = new_webhook_secret()
        async with self._pool.acquire() as conn:
            keyring = await self._keyring.current(conn)
            sealed = seal_secret(keyring, tenant=identity.tenant, endpoint_id=endpoint_id, secret=secret)
            async with conn.transaction():
                endpoint = await store.rotate_secret(
                    conn, tenant=identity.tenant, endpoint_id=endpoint_id, secret=sealed, overlap=overlap
                )
                if endpoint is None:
                    raise _no_such_endpoint(endpoint_id, "id")
                await audit.record(
                    conn,
                    actor=identity.spiffe_id,
                    action="webhook_endpoint.rotate_secret",
                    outcome="success",
                    tenant=identity.tenant,
                    source=source,
                    object_id=endpoint_id,
                    details={"previous_expires_in": overlap},
                )
        return EndpointWithSecret(endpoint, secret)

    async def redeliver(
        self, identity: Identity, event_id: str, *, endpoint_id: str | None, source: str | None
    ) -> list[store.Delivery]:
        """Send the event again, now, with a fresh retry window: to every endpoint that was
        subscribed when it happened (and is not deleted), or to ``endpoint_id`` only.

        404 for an unknown event (another tenant's included) or endpoint; 409 when no endpoint
        received the event (none was subscribed then, or ``endpoint_id`` was not).
        """
        tenant = identity.tenant
        async with self._pool.acquire() as conn, conn.transaction():
            if not await event_store.event_exists(conn, tenant=tenant, event_id=event_id):
                raise errors.NotFound(f"No such event: '{event_id}'.", param="id")
            if endpoint_id is not None and not await store.endpoint_exists(
                conn, tenant=tenant, endpoint_id=endpoint_id
            ):
                raise _no_such_endpoint(endpoint_id, "endpoint")
            deliveries = await store.redeliver(
                conn, tenant=tenant, event_id=event_id, endpoint_id=endpoint_id
            )
            if not deliveries:
                which = f"endpoint '{endpoint_id}' was" if endpoint_id else "no webhook endpoint was"
                raise errors.Conflict(
                    f"Event '{event_id}' has no webhook delivery to send again: {which} "
                    "subscribed to it when it happened.",
                    code="no_webhook_deliveries",
                    param="endpoint" if endpoint_id else "id",
                )
            await audit.record(
                conn,
                actor=identity.spiffe_id,
                action="event.redeliver",
                outcome="success",
                tenant=tenant,
                source=source,
                object_id=event_id,
                details={"endpoints": [d.endpoint_id for d in deliveries]},
            )
        return deliveries


def _no_such_endpoint(endpoint_id: str, param: str) -> errors.NotFound:
    return errors.NotFound(f"No such webhook endpoint: '{endpoint_id}'.", param=param)


# ---- delivery --------------------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """No HTTP answer; ``reason`` is fixed, safe text (stored as the delivery's last_error)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Transport(Protocol):
    """POSTs one webhook: returns the receiver's HTTP status (redirects are not followed), raises
    DeliveryFailed when there is none (time-out, connection refused, every address refused)."""

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one attempt came to: ``outcome`` is delivered, retry or dead (or stale: the delivery
    moved on meanwhile, redelivered or canceled, and this answer changed nothing)."""

    outcome: str
    status: int | None
    error: str | None


class Dispatcher:
    """Claims due deliveries and sends them (the loop is gateway/workers/webhooks.py)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: KeyringCache,
        settings: WebhookSettings,
        transport: Transport,
        metrics: Metrics,
        *,
        dev_mode: bool,
        user_agent: str,
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._settings = settings
        self._transport = transport
        self._metrics = metrics
        self._dev_mode = dev_mode
        self._user_agent = user_agent
        self._dead_counted_at = float("-inf")
        self._lag_measured_at = float("-inf")

    async def claim(self, limit: int) -> list[store.ClaimedDelivery]:
        """Up to ``limit`` due deliveries, round-robin over endpoints: each round takes at most
        ``per_endpoint`` of each one, and another round runs while some endpoint filled its share
        (it may have more due). One endpoint alone still gets every free slot; a dead endpoint's
        backlog gets no more than its share while others wait."""
        share = self._settings.per_endpoint
        claimed: list[store.ClaimedDelivery] = []
        async with self._pool.acquire() as conn:
            while len(claimed) < limit:
                got = await store.claim_due(
                    conn, lease=self._settings.lease, limit=limit - len(claimed), per_endpoint=share
                )
                claimed += got
                if max(Counter(c.endpoint_id for c in got).values(), default=0) < share:
                    break
        return claimed

    async def measure(self) -> None:
        """The outbox lag at most every LAG_INTERVAL seconds; the dead-letter count every
        DEAD_COUNT_INTERVAL seconds."""
        now = time.monotonic()
        if now - self._lag_measured_at < LAG_INTERVAL:
            return
        self._lag_measured_at = now
        async with self._pool.acquire() as conn:
            self._metrics.webhook_outbox_lag.set(await store.outbox_lag(conn))
            if now - self._dead_counted_at >= DEAD_COUNT_INTERVAL:
                self._metrics.webhook_dead_deliveries.set(await store.dead_count(conn))
                self._dead_counted_at = now

    async def deliver(self, claimed: store.ClaimedDelivery) -> Attempt:
        """Make the claimed attempt and record its outcome."""
        status: int | None = None
        try:
            check_url(claimed.url, dev_mode=self._dev_mode)  # IP literals skip the resolver's check
            body, headers = await self._request(claimed)
            status = await self._transport.post(claimed.url, body, headers)
            error = None if 200 <= status < 300 else f"HTTP {status}"
        except UnsafeUrl:
            error = "refused_address"
        except DeliveryFailed as exc:
            error = exc.reason[:MAX_ERROR_TEXT]
        except (KeyringError, SecretError) as exc:
            error = "secret_unavailable"
            log.exception(
                "webhook.secret_unavailable", endpoint=claimed.endpoint_id, error=type(exc).__name__
            )
        outcome = await self._record(claimed, status, error)
        if outcome != "stale":
            self._metrics.webhook_deliveries.labels(outcome).inc()
        # A receiver that fails is the tenant's to fix, but an operator wants to see it too.
        emit = log.info if outcome in ("delivered", "stale") else log.warning
        emit(
            "webhook.attempt",
            delivery=str(claimed.id),
            event_id=claimed.event_id,
            endpoint=claimed.endpoint_id,
            attempt=claimed.attempt,
            outcome=outcome,
            status=status,
            error=error,
        )
        return Attempt(outcome, status, error)

    async def _request(self, claimed: store.ClaimedDelivery) -> tuple[bytes, dict[str, str]]:
        body = views.encode(
            views.event(
                event_id=claimed.event_id,
                event_type=claimed.event_type,
                data=claimed.event_data,
                created=claimed.event_created,
            )
        )
        secrets = [await self._open(claimed, claimed.secret)]
        if claimed.previous is not None:
            secrets.append(await self._open(claimed, claimed.previous))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            "Payhub-Event-Id": claimed.event_id,
            "Payhub-Delivery": str(claimed.id),
            "Payhub-Attempt": str(claimed.attempt),
            # The new secret's signature first; during a rotation the previous one's follows.
            "Payhub-Signature": sign_webhook(body, secrets, timestamp=int(time.time())),
        }
        return body, headers

    async def _open(self, claimed: store.ClaimedDelivery, sealed: SealedSecret) -> str:
        keyring = self._keyring.keyring
        if sealed.kid not in keyring:  # rotated by another process: reload once
            async with self._pool.acquire() as conn:
                await self._keyring.get(conn, sealed.kid)
            keyring = self._keyring.keyring
        return open_secret(keyring, sealed, tenant=claimed.tenant, endpoint_id=claimed.endpoint_id)

    async def _record(self, claimed: store.ClaimedDelivery, status: int | None, error: str | None) -> str:
        # Shielded: a shutdown that cancels the worker still records an answer already received.
        return await asyncio.shield(self._write(claimed, status, error))

    async def _write(self, claimed: store.ClaimedDelivery, status: int | None, error: str | None) -> str:
        async with self._pool.acquire() as conn:
            if error is None:
                assert status is not None
                done = await store.record_delivered(
                    conn, delivery_id=claimed.id, attempt=claimed.attempt, status=status
                )
                return "delivered" if done else "stale"
            delay = backoff_delay(
                claimed.attempt, base=self._settings.backoff_base, cap=self._settings.backoff_cap
            )
            new_status = await store.record_failed(
                conn,
                delivery_id=claimed.id,
                attempt=claimed.attempt,
                backoff=delay,
                status=status,
                error=error,
            )
        if new_status is None:
            return "stale"
        return "dead" if new_status == "dead" else "retry"
