"""The one outbound HTTP client every HTTP connector shares (a ClientSession in a cleanup_ctx).

It applies the connector's connect/read timeouts, its circuit breaker, metrics, and the retry
rule: only idempotent calls are retried, and only when the request never reached the peer.
Errors come back as the connector error hierarchy:

* could not connect / circuit open  → ConnectorUnavailable (no money moved, fallback allowed)
* sent, then timed out or cut off   → OutcomeUnknown (money may have moved: settle by inquiry)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from config.settings import ConnectorSettings
from connectors.base import ConnectorUnavailable, OutcomeUnknown
from connectors.breaker import CircuitBreaker, CircuitState
from gateway.metrics import Metrics


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes
    headers: Mapping[str, str]


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
        reached_peer = False  # once a try reached the peer, "nothing happened" can no longer be said
        for attempt in range(attempts):
            if not breaker.allow():
                self._count(connector, operation, "circuit_open", 0.0)
                if reached_peer:
                    raise OutcomeUnknown(f"{connector}: circuit opened while retrying {operation}")
                raise ConnectorUnavailable(f"{connector}: circuit open")
            started = time.perf_counter()
            sent = False
            try:
                timeout = aiohttp.ClientTimeout(
                    sock_connect=config.connect_timeout, total=config.read_timeout
                )
                async with self._session.request(
                    method, url, json=json, data=data, headers=headers, timeout=timeout
                ) as response:
                    sent = True
                    body = await response.read()
                    reply = HttpReply(response.status, body, dict(response.headers))
            except (
                aiohttp.ClientConnectorError,
                aiohttp.ServerDisconnectedError,
                ConnectionRefusedError,
            ) as exc:
                breaker.failure()
                self._count(connector, operation, "unavailable", time.perf_counter() - started)
                unsent = isinstance(exc, aiohttp.ClientConnectorError | ConnectionRefusedError)
                if unsent and attempt + 1 < attempts:
                    continue
                if unsent:
                    raise ConnectorUnavailable(f"{connector}: cannot connect") from exc
                raise OutcomeUnknown(f"{connector}: connection lost during {operation}") from exc
            except (TimeoutError, aiohttp.ClientError) as exc:
                breaker.failure()
                self._count(connector, operation, "timeout", time.perf_counter() - started)
                reached_peer = True
                if idempotent and attempt + 1 < attempts:
                    continue
                if not sent and isinstance(exc, aiohttp.ClientConnectorError):
                    raise ConnectorUnavailable(f"{connector}: cannot connect") from exc
                raise OutcomeUnknown(f"{connector}: no answer to {operation}") from exc
            elapsed = time.perf_counter() - started
            reached_peer = True
            if reply.status >= 500:
                breaker.failure()
                self._count(connector, operation, "server_error", elapsed)
                if idempotent and attempt + 1 < attempts:
                    continue
                raise OutcomeUnknown(f"{connector}: HTTP {reply.status} on {operation}")
            breaker.success()
            self._count(connector, operation, "ok", elapsed)
            return reply
        raise AssertionError("unreachable")  # pragma: no cover

    def _count(self, connector: str, operation: str, outcome: str, elapsed: float) -> None:
        self._metrics.connector_calls.labels(connector, operation, outcome).inc()
        self._metrics.connector_latency.labels(connector, operation).observe(elapsed)
