"""The HTTP protocol handler for the client API, hardened against slow and malformed clients.

aiohttp bounds header sizes (``max_line_size``, ``max_field_size``, ``max_headers``) and idle
keep-alive connections, but has no deadline for *receiving* a request head: a client that sends
one header byte every few seconds (slowloris) holds its connection until the 75 s keep-alive
timer, and a few thousand such clients exhaust file descriptors. Its refusals of oversized or
malformed heads are also plain text with a traceback in the log. This subclass adds:

* a head deadline: a request head must be complete within ``header_timeout`` of the connection
  opening or of its first byte; otherwise a 408 in the error shape is written and the connection
  closed (counted as ``payhub_refused_requests_total{reason="header_timeout"}``). Slow *bodies*
  are bounded separately by the traffic middleware (``body_timeout``);
* parse refusals in the public error shape (431 ``header_too_large``, 400 ``bad_request``),
  counted by reason and logged in one line without a traceback.

It reads three attributes of aiohttp's ``RequestHandler`` that are not public API but have been
stable through 3.x (``_request_count``, ``_messages``, ``_current_request``); the e2e tests in
tests/e2e/test_traffic_hostile.py fail if a future aiohttp changes them.
"""

from __future__ import annotations

import asyncio
import http
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter

from gateway import errors
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.middlewares import new_request_id
from gateway.traffic.inputs import RequestTimeout

log = get_logger("gateway.traffic")


class HeaderTooLarge(errors.InvalidRequest):
    """431: request line or header fields longer, or more numerous, than the configured limits."""

    status = 431
    default_code = "header_too_large"


def _refusal(status: int, exc: BaseException | None) -> tuple[str | None, errors.ApiError]:
    """(metric reason or None when not a client fault, error to render) for a failed request."""
    if status >= 500:
        return None, errors.InternalError("An internal error occurred.")
    if isinstance(exc, LineTooLong) or (
        isinstance(exc, BadHttpMessage) and "too many headers" in str(exc.message).lower()
    ):
        return "header_too_large", HeaderTooLarge("Request line or header fields are too large.")
    return "bad_request", errors.InvalidRequest("Malformed HTTP request.", code="bad_request")


def _raw_response(error: errors.ApiError) -> bytes:
    """A complete HTTP/1.1 response for when no aiohttp response object can be used."""
    request_id = new_request_id()
    body = error.body(request_id)
    head = (
        f"HTTP/1.1 {error.status} {http.HTTPStatus(error.status).phrase}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Request-Id: {request_id}\r\nServer: payhub\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


HEAD_REFUSALS = ("header_timeout", "header_too_large", "bad_request")  # payhub_refused_requests_total reasons


def refusal_counters(metrics: Metrics) -> dict[str, Counter]:
    """The refusal counters of request heads, bound once (per listener, not per connection)."""
    return {reason: metrics.refused_requests.labels(reason) for reason in HEAD_REFUSALS}


class GuardedRequestHandler(RequestHandler):
    __slots__ = ("_head_timeout", "_head_timer", "_heads_at_arm", "_last_payload", "_refused")

    def __init__(
        self,
        manager: web.Server,
        *,
        head_timeout: float,
        metrics: Metrics,
        refused: dict[str, Counter] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout = head_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_at_arm = 0
        self._last_payload: StreamReader | None = None
        self._refused = refused if refused is not None else refusal_counters(metrics)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm(0)  # the first head is due within the deadline, even if no byte ever comes

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        # Judged before parsing: bytes that arrive once the previous body is complete start a head.
        starts_head = self._last_payload is None or self._last_payload.is_eof()
        super().data_received(data)
        if self._request_count != heads:  # one or more heads completed
            self._disarm()
            self._last_payload = self._messages[-1][1] if self._messages else None
        elif data and starts_head and self._head_timer is None:  # (aiohttp also feeds b"" internally)
            self._arm(heads)

    def _arm(self, heads: int) -> None:
        self._heads_at_arm = heads
        self._head_timer = self._loop.call_later(self._head_timeout, self._head_overdue)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._request_count != self._heads_at_arm:
            return
        if self._current_request is not None:  # a pipelined head behind a running request: wait for it
            self._arm(self._heads_at_arm)
            return
        self._refused["header_timeout"].inc()
        log.info("http.refused", reason="header_timeout", timeout=self._head_timeout)
        transport.write(
            _raw_response(
                RequestTimeout(f"The request head did not arrive within {self._head_timeout:g} seconds.")
            )
        )
        self.force_close()  # close() flushes the 408 first

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        reason, error = _refusal(status, exc)
        if reason is not None:
            self._refused[reason].inc()
            log.info("http.refused", reason=reason, peer=request.remote, detail=str(message or exc)[:200])
        else:
            log.error("http.protocol_error", error=type(exc).__name__ if exc else None)
        if request.writer.output_size > 0:  # part of a response is out: the connection is unusable
            raise ConnectionError("Response is sent already, cannot send another response")
        request_id = new_request_id()
        response = web.Response(
            status=error.status,
            body=error.body(request_id),
            content_type="application/json",
            headers={"Request-Id": request_id, "Server": "payhub"},
        )
        response.force_close()
        return response


def guarded_handler_factory(
    runner: web.AppRunner, *, head_timeout: float, metrics: Metrics, **handler_kwargs: Any
) -> Callable[[], GuardedRequestHandler]:
    """A protocol factory for MtlsSite; ``handler_kwargs`` are the ones given to ``web.AppRunner``."""

    refused = refusal_counters(metrics)

    def make() -> GuardedRequestHandler:
        server = runner.server
        assert server is not None, "runner.setup() must run first"
        return GuardedRequestHandler(
            server,
            loop=asyncio.get_running_loop(),
            head_timeout=head_timeout,
            metrics=metrics,
            refused=refused,
            **handler_kwargs,
        )

    return make
