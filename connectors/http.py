"""The one outbound HTTP client every HTTP connector shares (a ClientSession in a cleanup_ctx).

It applies the connector's connect/read timeouts (:func:`exchange_timeout`), its circuit breaker,
metrics, and the retry rule: only idempotent calls are retried (the peer de-duplicates them on our
reference). Errors come back as the connector error hierarchy. ``ConnectorUnavailable`` is said
only when it is *proven* that no try of the call wrote its request, because routing reads it as
"no money moved" and falls back to another connector:

* refused, DNS failure, TLS handshake failure, connect timeout, circuit open before any try
                                    → ConnectorUnavailable (nothing sent: fallback allowed)
* a read timeout, a connection lost or reset mid-exchange, an unreadable body, a 5xx, or any of
  the above on a retry after an earlier try reached the peer
                                    → OutcomeUnknown (money may have moved: settle by inquiry)

Other answers are returned for the connector to map. A status it has no documented meaning for
("not accepted, nothing done") is :func:`unexpected_answer`: unknown too, since the peer got the
request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp

from config.settings import ConnectorSettings
from connectors.base import ConnectorUnavailable, OutcomeUnknown
from connectors.breaker import CircuitBreaker, CircuitState
from gateway.metrics import Metrics

# A try that failed with one of these never wrote a byte of the request: the connection was not
# established. ClientConnectorError covers refused, DNS failure (ClientConnectorDNSError) and TLS
# handshake failures (ClientConnectorSSLError, ClientConnectorCertificateError); aiohttp raises
# ConnectionTimeoutError only while connecting. Every other failure may come after the write.
NOTHING_SENT: Final = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectionRefusedError)


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    headers: Mapping[str, str]


def exchange_timeout(config: ConnectorSettings) -> aiohttp.ClientTimeout:
    """``connect_timeout`` for getting a connection (a free pool slot, DNS, TCP, TLS), then
    ``read_timeout`` for the answer once the request is written; the whole exchange at most both.

    The connect limit is its own (``connect``), strictly inside the total, so a connect that stalls
    always ends as ConnectionTimeoutError (nothing was written). A single total equal to or below the
    connect timeout would cut a stalled connect with a bare TimeoutError, indistinguishable from a
    read timeout, and "nothing sent" could no longer be proven.
    """
    return aiohttp.ClientTimeout(
        total=config.connect_timeout + config.read_timeout,
        connect=config.connect_timeout,
        sock_connect=config.connect_timeout,
        sock_read=config.read_timeout,
    )


def unexpected_answer(connector: str, operation: str, reply: HttpReply, detail: str = "") -> OutcomeUnknown:
    """The error for an answer the connector has no documented meaning for (a 401, 404, 429, 204, …).

    The peer was reached and answered, so whatever it did with the request is unknown: never
    ConnectorUnavailable, which would let routing charge the payment again at another connector.
    The core keeps the payment processing until a status inquiry by the same reference settles it.
    """
    why = f" ({detail})" if detail else ""
    return OutcomeUnknown(f"{connector}: unexpected HTTP {reply.status} on {operation}{why}")


class OutboundClient:
    def __init__(self, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self._session = session
        self._metrics = metrics
        self._breakers: dict[str, CircuitBreaker] = {}

    def breaker(self, connector: str, config: ConnectorSettings) -> CircuitBreaker:
        breaker = self._breakers.get(connector)
        if breaker is None:
            gauge = self._metrics.connector_circuit_state.labels(connector=connector)
            gauge.set(CircuitState.CLOSED)
            breaker = CircuitBreaker(
                failure_threshold=config.breaker_failures,
                reset_timeout=config.breaker_reset,
                on_change=gauge.set,
            )
            self._breakers[connector] = breaker
        return breaker

    async def request(
        self,
        connector: str,
        config: ConnectorSettings,
        operation: str,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: Mapping[str, str] | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = False,
    ) -> HttpReply:
        breaker = self.breaker(connector, config)
        attempts = 2 if idempotent else 1
        reached_peer = False  # once a try (maybe) reached the peer, "nothing happened" can no longer be said
        for attempt in range(attempts):
            retry_left = attempt + 1 < attempts
            if not breaker.allow():
                self._count(connector, operation, "circuit_open", 0.0)
                if reached_peer:
                    raise OutcomeUnknown(f"{connector}: circuit opened while retrying {operation}")
                raise ConnectorUnavailable(f"{connector}: circuit open")
            started = time.perf_counter()
            try:
                timeout = exchange_timeout(config)
                async with self._session.request(
                    method, url, json=json, data=data, headers=headers, timeout=timeout
                ) as response:
                    body = await response.read()
                    reply = HttpReply(response.status, body, dict(response.headers))
            except NOTHING_SENT as exc:
                breaker.failure()
                self._count(connector, operation, "unavailable", time.perf_counter() - started)
                if retry_left:
                    continue
                if reached_peer:  # this try sent nothing, an earlier one may have done it all
                    raise OutcomeUnknown(f"{connector}: cannot connect to retry {operation}") from exc
                raise ConnectorUnavailable(f"{connector}: cannot connect") from exc
            except aiohttp.ServerDisconnectedError as exc:
                # Cut off before an answer: the peer had the request. Not retried (as ever).
                breaker.failure()
                self._count(connector, operation, "unavailable", time.perf_counter() - started)
                raise OutcomeUnknown(f"{connector}: connection lost during {operation}") from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                # A read timeout, a reset mid-exchange, an unreadable body: after the write, maybe.
                breaker.failure()
                self._count(connector, operation, "timeout", time.perf_counter() - started)
                reached_peer = True
                if retry_left:
                    continue
                raise OutcomeUnknown(f"{connector}: no answer to {operation}") from exc
            elapsed = time.perf_counter() - started
            reached_peer = True
            if reply.status >= 500:
                breaker.failure()
                self._count(connector, operation, "server_error", elapsed)
                if retry_left:
                    continue
                raise OutcomeUnknown(f"{connector}: HTTP {reply.status} on {operation}")
            breaker.success()
            self._count(connector, operation, "ok", elapsed)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, connector: str, operation: str, outcome: str, elapsed: float) -> None:
        self._metrics.connector_calls.labels(connector, operation, outcome).inc()
        self._metrics.connector_latency.labels(connector, operation).observe(elapsed)
