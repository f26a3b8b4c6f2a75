"""The ISO 8583 card connector: one persistent, signed-on TCP link to the acquirer.

Requests are multiplexed on the link and answers matched to them by STAN (field 11), so any
number of payments share one connection and a slow answer blocks nobody. A supervisor task
keeps the link up (reconnect with back-off, 0800 sign-on on connect, 0800 echo when idle).

What the core sees (connectors/base.py):

* could not connect, sign-on refused, circuit open → ConnectorUnavailable: nothing was sent
* an authorization sent and not answered in ``read_timeout`` → a 0400 reversal with the original
  data elements, repeated (0401) until acknowledged: then FAILED ``connector_unavailable`` (never
  charged); if no reversal is acknowledged either → OutcomeUnknown, and ``sync`` settles it later
* capture (0220), void (0400), refund (0200, processing code 20) are idempotent at the acquirer
  (keyed by the attempt's RRN): repeated until answered, else OutcomeUnknown
* ``sync`` asks by RRN alone (field 48 ``INQ``): the connector keeps no state across restarts

The circuit breaker counts connection failures and timeouts; declines are healthy answers.
Metrics: ``payhub_connector_calls{operation, outcome}`` with outcome one of succeeded, failed,
pending, reversed (no answer, reversal acknowledged), unavailable, unknown, circuit_open,
cancelled; ``payhub_connector_call_duration_seconds{operation}``; the circuit state gauge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from prometheus_client import Counter, Histogram

from config.settings import ConfigError, ConnectorSettings, split_hostport
from connectors.base import (
    CallbackNotice,
    ConnectorResult,
    ConnectorUnavailable,
    InvalidParams,
    Outcome,
    OutcomeUnknown,
    PaymentRequest,
    SignatureError,
)
from connectors.breaker import CircuitBreaker, CircuitState
from connectors.iso8583_card import transformers as wire
from gateway.logs import get_logger
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from connectors.registry import ConnectorDeps

log = get_logger("connectors.iso8583_card")

ECHO_INTERVAL: Final = 30.0  # seconds of idle link before an echo test
SENDS: Final = 3  # reversals, advices, refunds, voids: tries until answered
BACKOFF_MIN: Final = 0.1
BACKOFF_MAX: Final = 5.0
WRITE_HIGH_WATER: Final = 256 * 1024
_REPEAT_MTI: Final = {"0220": "0221", "0400": "0401"}


def _now() -> datetime:
    return datetime.now(UTC)


class _NoAnswer(Exception):
    """Sent, but no answer came back: timed out, or the link dropped while waiting."""


class _Link:
    """One connection: writes framed requests and routes answers to their waiters by STAN."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.pending: dict[str, asyncio.Future[wire.Message]] = {}
        self.last_activity = time.monotonic()
        self.lost = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._outgoing: list[bytes] = []  # framed requests of this loop turn, written together
        self._task = asyncio.create_task(self._read_loop(), name="iso8583-reader")

    @property
    def alive(self) -> bool:
        return not self.lost.is_set()

    def send(self, message: wire.Message) -> asyncio.Future[wire.Message]:
        """Write one request; the future resolves with the answer carrying the same STAN."""
        if not self.alive:
            raise ConnectorUnavailable("the acquirer link is down")
        try:
            data = wire.pack(message)
        except wire.WireError as exc:
            raise InvalidParams(str(exc)) from exc
        future: asyncio.Future[wire.Message] = self._loop.create_future()
        self.pending[message["11"]] = future
        outgoing = self._outgoing
        outgoing.append(data)
        if len(outgoing) == 1:
            self._loop.call_soon(self._write_out)
        self.last_activity = time.monotonic()
        return future

    def _write_out(self) -> None:
        """The requests of one loop turn in one write: one send() on the socket, not one per payment."""
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self.alive:
            self._writer.write(b"".join(outgoing))

    async def drain(self) -> None:
        # Only under back-pressure: a drain per message would cost a task switch each.
        if self._writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            await self._writer.drain()

    async def _read_loop(self) -> None:
        try:
            while True:
                prefix = await self._reader.readexactly(2)
                payload = await self._reader.readexactly(wire.frame_length(prefix))
                self.last_activity = time.monotonic()
                try:
                    message = wire.unpack(payload)
                except wire.WireError as exc:
                    log.warning("iso8583.bad_answer", error=str(exc))
                    continue
                future = self.pending.pop(message.get("11", ""), None)
                if future is None or future.done():
                    # Its waiter gave up (and reversed it): the reversal settles it.
                    log.info("iso8583.late_answer", mti=message.get("t"), stan=message.get("11"))
                    continue
                future.set_result(message)
        except (asyncio.IncompleteReadError, OSError):
            pass
        finally:
            self._down()

    def _down(self) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        self._outgoing = []
        self._writer.transport.abort()
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionResetError("the acquirer link dropped"))

    async def close(self) -> None:
        self._down()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class Iso8583CardConnector:
    methods = frozenset({"card"})

    def __init__(
        self,
        name: str,
        config: ConnectorSettings,
        *,
        host: str,
        port: int,
        metrics: Metrics | None = None,
        terminal_id: str = "PAYHUB01",
        merchant: str = "payhub",
        echo_interval: float = ECHO_INTERVAL,
        sends: int = SENDS,
    ) -> None:
        self.name = name
        self._config = config
        self._host = host
        self._port = port
        self._metrics = metrics
        self._terminal_id = terminal_id
        # Capture, void, refund and inquiries carry no tenant: they name the connector's merchant.
        self._terminal = wire.Terminal(terminal_id, merchant)
        self._echo_interval = echo_interval
        self._sends = max(1, sends)
        gauge = metrics.connector_circuit_state.labels(connector=name) if metrics else None
        if gauge is not None:
            gauge.set(CircuitState.CLOSED)
        self.breaker = CircuitBreaker(
            failure_threshold=config.breaker_failures,
            reset_timeout=config.breaker_reset,
            on_change=gauge.set if gauge is not None else None,
        )
        self._link: _Link | None = None
        self._connect_lock = asyncio.Lock()
        self._stan = 0
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._calls: dict[tuple[str, str], Counter] = {}
        self._latency: dict[str, Histogram] = {}
        # Observable for tests and operators.
        self.sign_ons = 0
        self.echoes = 0

    @classmethod
    def create(cls, name: str, config: ConnectorSettings, deps: ConnectorDeps) -> Iso8583CardConnector:
        """Registry entry point; options: echo_interval (s), terminal_id, merchant_id, sends."""
        sandbox = deps.settings.sandbox
        endpoint = config.endpoint or f"{sandbox.host}:{sandbox.acquirer}"
        host, port = split_hostport(endpoint, key=f"connectors.{name}.endpoint")
        options = config.options
        try:
            echo_interval = float(options.get("echo_interval", ECHO_INTERVAL))
            sends = int(options.get("sends", SENDS))
        except ValueError as exc:
            raise ConfigError(f"connectors.{name}.options: {exc}") from exc
        if echo_interval <= 0 or sends < 1:
            raise ConfigError(f"connectors.{name}.options: echo_interval > 0 and sends >= 1 required")
        return cls(
            name,
            config,
            host=host,
            port=port,
            metrics=deps.metrics,
            terminal_id=options.get("terminal_id", "PAYHUB01"),
            merchant=options.get("merchant_id", "payhub"),
            echo_interval=echo_interval,
            sends=sends,
        )

    # ---- lifecycle (Managed) -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and sign on now if the acquirer is up; either way keep the link up from now on."""
        self._closing = False
        try:
            await self._ensure_link()
        except ConnectorUnavailable as exc:
            log.warning("iso8583.start_unconnected", connector=self.name, error=str(exc))
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.name}-link")

    async def close(self) -> None:
        self._closing = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        link, self._link = self._link, None
        if link is not None:
            await link.close()

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.alive

    async def _supervise(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            link = self._link
            if link is None or not link.alive:
                try:
                    await self._ensure_link()
                except ConnectorUnavailable as exc:
                    log.warning(
                        "iso8583.reconnect_failed", connector=self.name, error=str(exc), retry=backoff
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                else:
                    backoff = BACKOFF_MIN
                continue
            idle = time.monotonic() - link.last_activity
            if idle >= self._echo_interval:
                await self._echo(link)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._echo_interval - idle):
                    await link.lost.wait()

    async def _echo(self, link: _Link) -> None:
        try:
            response = await self._ask(link, wire.network(wire.ECHO, stan=wire.NO_STAN, now=_now()))
        except (_NoAnswer, ConnectorUnavailable):
            response = {}
        self.echoes += 1
        if response.get("39") != "00":
            log.warning("iso8583.echo_failed", connector=self.name, code=response.get("39"))
            await link.close()  # the supervisor reconnects

    async def _ensure_link(self) -> _Link:
        link = self._link
        if link is not None and link.alive:
            return link
        async with self._connect_lock:
            link = self._link
            if link is not None and link.alive:
                return link
            if self._closing:
                raise ConnectorUnavailable(f"{self.name}: shutting down")
            self._link = link = await self._connect()
            return link

    async def _connect(self) -> _Link:
        try:
            async with asyncio.timeout(self._config.connect_timeout):
                reader, writer = await asyncio.open_connection(self._host, self._port)
        except (OSError, TimeoutError) as exc:
            raise ConnectorUnavailable(f"{self.name}: cannot connect to the acquirer") from exc
        link = _Link(reader, writer)
        try:
            response = await self._ask(link, wire.network(wire.SIGN_ON, stan=wire.NO_STAN, now=_now()))
        except BaseException as exc:  # cancelled too: never leave a half-open link behind
            await link.close()
            if isinstance(exc, _NoAnswer):
                raise ConnectorUnavailable(f"{self.name}: no answer to sign-on") from exc
            raise
        if response.get("39") != "00":
            await link.close()
            raise ConnectorUnavailable(f"{self.name}: sign-on refused ({response.get('39')})")
        self.sign_ons += 1
        log.info("iso8583.signed_on", connector=self.name, endpoint=f"{self._host}:{self._port}")
        return link

    # ---- one request, one answer ---------------------------------------------------------------

    def _next_stan(self, link: _Link) -> str:
        while True:
            self._stan = self._stan % 999_999 + 1
            stan = f"{self._stan:06d}"
            if stan not in link.pending:
                return stan

    async def _ask(self, link: _Link, message: wire.Message) -> wire.Message:
        """Send on ``link`` with a fresh STAN (written into ``message``) and wait for its answer."""
        stan = self._next_stan(link)
        message["11"] = stan
        future = link.send(message)
        try:
            async with asyncio.timeout(self._config.read_timeout):
                await link.drain()
                return await future
        except TimeoutError as exc:
            raise _NoAnswer(f"no answer to {message['t']} in {self._config.read_timeout}s") from exc
        except OSError as exc:  # the link dropped while we waited
            raise _NoAnswer(f"link lost while waiting for the answer to {message['t']}") from exc
        finally:
            link.pending.pop(stan, None)

    async def _exchange(self, message: wire.Message) -> wire.Message:
        """(Re)connect if needed, then ask. ConnectorUnavailable means the message was not sent."""
        return await self._ask(await self._ensure_link(), message)

    # ---- breaker and metrics around each operation ---------------------------------------------

    async def _guarded(
        self, operation: str, work: Callable[[], Awaitable[tuple[ConnectorResult, bool]]]
    ) -> ConnectorResult:
        """Run ``work`` if the circuit allows; it returns (result, answered in time)."""
        if not self.breaker.allow():
            self._count(operation, "circuit_open", 0.0)
            raise ConnectorUnavailable(f"{self.name}: circuit open")
        started = time.perf_counter()
        healthy = False
        outcome = "error"
        try:
            result, healthy = await work()
            outcome = result.outcome.value if healthy else "reversed"
        except ConnectorUnavailable:
            outcome = "unavailable"
            raise
        except OutcomeUnknown:
            outcome = "unknown"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            if healthy:
                self.breaker.success()
            elif outcome != "cancelled" or self.breaker.state is not CircuitState.CLOSED:
                # A cancelled caller says nothing about the acquirer, but a half-open trial must end.
                self.breaker.failure()
            self._count(operation, outcome, time.perf_counter() - started)
        return result

    def _count(self, operation: str, outcome: str, elapsed: float) -> None:
        if self._metrics is None:
            return
        counter = self._calls.get((operation, outcome))
        if counter is None:
            counter = self._metrics.connector_calls.labels(self.name, operation, outcome)
            self._calls[(operation, outcome)] = counter
        counter.inc()
        histogram = self._latency.get(operation)
        if histogram is None:
            histogram = self._metrics.connector_latency.labels(self.name, operation)
            self._latency[operation] = histogram
        histogram.observe(elapsed)

    async def _until_answered(self, operation: str, message: wire.Message) -> tuple[ConnectorResult, bool]:
        """Send an idempotent request (the acquirer dedupes its RRN) until it is answered."""
        for attempt in range(self._sends):
            if attempt:
                message = {**message, "t": _REPEAT_MTI.get(message["t"], message["t"])}
            try:
                response = await self._exchange(message)
            except ConnectorUnavailable:
                if attempt == 0:
                    raise  # never sent: nothing can have happened
                await asyncio.sleep(BACKOFF_MIN * attempt)
                continue
            except _NoAnswer:
                continue
            return wire.result(operation, response), True
        raise OutcomeUnknown(f"{self.name}: no answer to {operation} after {self._sends} tries")

    # ---- PaymentConnector ----------------------------------------------------------------------

    async def authorize(self, request: PaymentRequest) -> ConnectorResult:
        if request.method != "card":
            raise InvalidParams(f"{self.name} takes card payments only")
        message = wire.authorization(request, stan=wire.NO_STAN, now=_now(), terminal_id=self._terminal_id)

        async def work() -> tuple[ConnectorResult, bool]:
            try:
                response = await self._exchange(message)
            except _NoAnswer:
                return await self._reverse_unanswered(message), False
            return wire.result("authorize", response), True

        return await self._guarded("authorize", work)

    async def _reverse_unanswered(self, request: wire.Message) -> ConnectorResult:
        """Undo a request that got no answer; FAILED once acknowledged, else OutcomeUnknown."""
        rrn = request["37"]
        log.warning("iso8583.no_answer", connector=self.name, mti=request["t"], rrn=rrn)
        for attempt in range(self._sends):
            reversal = wire.reversal_of(request, stan=wire.NO_STAN, now=_now(), repeat=attempt > 0)
            try:
                response = await self._exchange(reversal)
            except ConnectorUnavailable:
                await asyncio.sleep(BACKOFF_MIN * (attempt + 1))
                continue
            except _NoAnswer:
                continue
            code = response.get("39", "")
            if code in wire.REVERSAL_ACKNOWLEDGED:
                log.info("iso8583.reversed", connector=self.name, rrn=rrn, code=code)
                return ConnectorResult(
                    Outcome.FAILED,
                    rrn,
                    decline_code="connector_unavailable",
                    message="the acquirer did not answer in time; the request was reversed",
                )
            log.error("iso8583.reversal_refused", connector=self.name, rrn=rrn, code=code)
            break
        raise OutcomeUnknown(f"{self.name}: no answer to {request['t']} {rrn} and no reversal acknowledged")

    async def capture(
        self, *, attempt_id: str, reference: str, amount: int, currency: str
    ) -> ConnectorResult:
        message = wire.capture_advice(
            attempt_id=attempt_id,
            authorization_rrn=reference,
            amount=amount,
            currency=currency,
            stan=wire.NO_STAN,
            now=_now(),
            terminal=self._terminal,
        )
        return await self._guarded("capture", lambda: self._until_answered("capture", message))

    async def void(self, *, attempt_id: str, reference: str) -> ConnectorResult:
        message = wire.reversal(
            rrn=wire.rrn_for(attempt_id),
            original=wire.Original("0100", reference),
            stan=wire.NO_STAN,
            now=_now(),
            terminal=self._terminal,
        )
        return await self._guarded("void", lambda: self._until_answered("void", message))

    async def refund(self, *, attempt_id: str, reference: str, amount: int, currency: str) -> ConnectorResult:
        message = wire.refund(
            attempt_id=attempt_id,
            payment_rrn=reference,
            amount=amount,
            currency=currency,
            stan=wire.NO_STAN,
            now=_now(),
            terminal=self._terminal,
        )
        return await self._guarded("refund", lambda: self._until_answered("refund", message))

    async def sync(self, *, attempt_id: str, operation: str) -> ConnectorResult:
        """Status inquiry by the attempt's RRN; the acquirer answers from its book."""
        message = wire.inquiry(
            attempt_id=attempt_id, operation=operation, stan=wire.NO_STAN, now=_now(), terminal=self._terminal
        )

        async def work() -> tuple[ConnectorResult, bool]:
            try:
                response = await self._exchange(message)
            except _NoAnswer as exc:
                raise OutcomeUnknown(f"{self.name}: no answer to the status inquiry") from exc
            return wire.result(operation, response), True

        return await self._guarded("sync", work)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> CallbackNotice:
        raise SignatureError("the card acquirer sends no callbacks")
