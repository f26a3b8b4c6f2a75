"""The webhook delivery loop, and its HTTP transport (aiohttp, its own session).

Every ``interval`` seconds the loop measures the outbox lag, claims as many due deliveries as it
has free slots (``concurrency`` POSTs in flight per process, at most ``batch`` per claim) and
starts one task per delivery, so a slow receiver holds one slot, not the whole pass. Several
processes can run it over one database: a claim leases rows with ``FOR UPDATE SKIP LOCKED``.

The transport never follows redirects and connects only to addresses
:func:`gateway.domain.webhook_urls.address_allowed` accepts: :class:`SafeResolver` drops every
other address a host name resolves to (DNS rebinding: the name is re-resolved at each connection,
and a private answer reaches nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from config.settings import WebhookSettings
from gateway.domain.webhook_urls import address_allowed
from gateway.logs import get_logger
from gateway.services.webhooks import Attempt, DeliveryFailed, Dispatcher

log = get_logger("gateway.workers.webhooks")

CONNECTIONS_PER_HOST = 8  # one receiver cannot take every slot's connection


class SafeResolver(AbstractResolver):
    """Resolves with ``inner`` and keeps only the addresses the hub may connect to."""

    def __init__(self, *, allow_loopback: bool, inner: AbstractResolver | None = None) -> None:
        self._allow_loopback = allow_loopback
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._allowed(r["host"])]
        if not allowed:
            # An OSError becomes aiohttp's ClientConnectorDNSError: the attempt fails, no connection.
            raise OSError(f"{host} resolves to no address webhooks may be sent to")
        return allowed

    def _allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return address_allowed(address, allow_loopback=self._allow_loopback)

    async def close(self) -> None:
        await self._inner.close()


class AiohttpTransport:
    """:class:`gateway.services.webhooks.Transport` over an aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, *, timeout: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        try:
            async with self._session.post(
                url, data=body, headers=dict(headers), allow_redirects=False, timeout=self._timeout
            ) as response:
                # The body is not needed; reading a little lets the connection be reused.
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    await response.content.read(4096)
                return response.status
        except TimeoutError as exc:
            raise DeliveryFailed("timeout") from exc
        except aiohttp.ClientConnectorDNSError as exc:
            raise DeliveryFailed("refused_address_or_dns") from exc
        except aiohttp.ClientConnectorError as exc:
            raise DeliveryFailed("connection_failed") from exc
        except aiohttp.InvalidURL as exc:
            raise DeliveryFailed("invalid_url") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryFailed(f"connection_error: {type(exc).__name__}") from exc


@contextlib.asynccontextmanager
async def webhook_session(
    settings: WebhookSettings, *, dev_mode: bool
) -> AsyncIterator[aiohttp.ClientSession]:
    """The webhooks' own session (not the connectors' OutboundClient): private addresses refused."""
    connector = aiohttp.TCPConnector(
        resolver=SafeResolver(allow_loopback=dev_mode),
        limit=settings.concurrency,
        limit_per_host=CONNECTIONS_PER_HOST,
    )
    async with aiohttp.ClientSession(
        connector=connector, raise_for_status=False, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


async def run_webhooks(dispatcher: Dispatcher, settings: WebhookSettings) -> None:
    """Claim while slots are free and deliveries are due; with every slot busy, wait for the first
    to finish (not a whole interval); with nothing due, sleep ``interval``."""
    inflight: set[asyncio.Task[Attempt]] = set()
    try:
        while True:
            more = False
            try:
                await dispatcher.measure()
                free = settings.concurrency - len(inflight)
                if free > 0:
                    limit = min(free, settings.batch)
                    claimed = await dispatcher.claim(limit)
                    for delivery in claimed:
                        task = asyncio.create_task(
                            dispatcher.deliver(delivery), name=f"webhook-{delivery.id}"
                        )
                        inflight.add(task)
                        task.add_done_callback(_finished(inflight))
                    more = len(claimed) == limit  # there may be more due
                else:
                    more = True
            except Exception as exc:
                log.warning("webhooks.pass_failed", error=type(exc).__name__)
            if not more:
                await asyncio.sleep(settings.interval)
            elif len(inflight) >= settings.concurrency:
                await asyncio.wait(
                    set(inflight), timeout=settings.interval, return_when=asyncio.FIRST_COMPLETED
                )
    finally:
        for task in inflight:
            task.cancel()
        # A canceled attempt's lease expires and the delivery is tried again (the next attempt).
        await asyncio.gather(*inflight, return_exceptions=True)


def _finished(inflight: set[asyncio.Task[Attempt]]) -> Callable[[asyncio.Task[Attempt]], None]:
    def done(task: asyncio.Task[Attempt]) -> None:
        inflight.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("webhooks.attempt_failed", error=type(exc).__name__)

    return done
