"""Helpers shared by the simulators: serving an aiohttp app, fault knobs, restarts, JSON bodies and
errors; and, for the bank and the e-wallet, signed callbacks and the refund call they both answer.

Restarts (``POST /restart`` on the books service, :mod:`connectors.sandbox.books`): every simulator is
:class:`Restartable`. A :class:`Restarter` takes one down as a real processor or biller restarts (it
stops listening, so new connections are refused, and cuts the open ones), forgets its records if asked,
and listens again on the same port after a while. Forgetting gives the simulator a fresh, empty state:
its book, records, pending transfers or orders and their timers, callbacks not sent yet; its
configuration, keys, serial counters and fault knobs stay. It is meant for billers (utility, telecom),
whose un-answered postings are lost in a crash; forgetting the acquirer's or the bank's book drops
*committed* money, so a test doing it breaks conservation on purpose.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import ssl
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, Final, Generic, Protocol, Self, TypeVar, runtime_checkable

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.typedefs import Handler

from config.settings import SandboxService, Settings
from crypto.pki import PkiError, PkiPaths, issue_client
from crypto.signatures import sign_webhook
from gateway.logs import get_logger

# The callback machinery below was born in the bank simulator; its lines keep that logger name.
log = get_logger("connectors.sandbox.bank")
restart_log = get_logger("connectors.sandbox")

CLIENT_CERT_NAME: Final = "sandbox"
RETRY_DELAYS: Final = (0.5, 1.0, 2.0)
CALLBACK_TIMEOUT: Final = 5.0

Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{3}$")]
Reference = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Amount = Annotated[int, msgspec.Meta(gt=0, le=10**15)]


class Simulator(Protocol):
    async def close(self) -> None: ...


@runtime_checkable
class Restartable(Protocol):
    """A simulator that can go down and come back on its port (see :class:`Restarter`)."""

    async def stop_listening(self) -> None:
        """Refuse new connections and cut the open ones."""

    async def listen(self) -> None:
        """Listen again, on the port listened on before."""

    def forget(self) -> None:
        """A fresh, empty state: drop the records and cancel their pending work; settings stay."""


@dataclass
class Faults:
    """Knobs a test or a load run turns at ``POST /faults`` (HTTP simulators) or directly."""

    latency: float = 0.0  # seconds added to every answer
    error_rate: float = 0.0  # share of requests answered 503 (HTTP) / left unanswered (TCP)
    drop_rate: float = 0.0  # share of connections closed without an answer

    async def delay(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    def error(self) -> bool:
        return self.error_rate > 0 and random.random() < self.error_rate  # noqa: S311 - test traffic

    def drop(self) -> bool:
        return self.drop_rate > 0 and random.random() < self.drop_rate  # noqa: S311 - test traffic


FAULTS = web.AppKey("faults", Faults)
# What HttpSimulator.forget() calls: the app's records cleared (utility, telecom).
FORGET: Final[web.AppKey[Callable[[], None]]] = web.AppKey("forget")
# Never slowed, failed or dropped by the fault knobs: turning them off, and reading the book.
FAULT_EXEMPT: Final = frozenset({"/faults", "/book"})


async def set_faults(request: web.Request) -> web.Response:
    body = await request.json()
    faults = request.app[FAULTS]
    for name in ("latency", "error_rate", "drop_rate"):
        if name in body:
            setattr(faults, name, float(body[name]))
    return web.json_response(
        {"latency": faults.latency, "error_rate": faults.error_rate, "drop_rate": faults.drop_rate}
    )


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults = request.app[FAULTS]
    if request.path not in FAULT_EXEMPT:
        await faults.delay()
        if faults.drop() and request.transport is not None:
            request.transport.abort()
            raise asyncio.CancelledError
        if faults.error():
            return web.json_response({"error": "injected fault"}, status=503)
    return await handler(request)


def simulator_app(forget: Callable[[], None] | None = None) -> web.Application:
    """An aiohttp app with fault knobs at POST /faults (not applied to /faults and /book);
    ``forget`` empties its records on a restart that forgets (see :class:`HttpSimulator`)."""
    app = web.Application(middlewares=[fault_middleware])
    app[FAULTS] = Faults()
    if forget is not None:
        app[FORGET] = forget
    app.router.add_post("/faults", set_faults)
    return app


class HttpSimulator:
    """An aiohttp app served on ``host``:``port`` (the OS's choice when asked for 0); restartable."""

    def __init__(self, runner: web.AppRunner, host: str, port: int) -> None:
        self.runner = runner
        self.host = host
        self.port = port
        self._site: web.TCPSite | None = None

    async def listen(self) -> None:
        site = web.TCPSite(self.runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        self.port = int(self.runner.addresses[0][1])

    async def stop_listening(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self.runner.server
        for connection in server.connections if server is not None else ():
            if connection.transport is not None:
                connection.transport.abort()

    def forget(self) -> None:
        forget = self.runner.app.get(FORGET)
        if forget is not None:
            forget()

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_app(app: web.Application, host: str, port: int) -> HttpSimulator:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = HttpSimulator(runner, host, port)
    await server.listen()
    return server


def bound_port(server: HttpSimulator, asked: int) -> int:
    """The port actually listened on: ``asked``, or the one the OS chose when asked for port 0."""
    return asked or server.port


class Restarting(Exception):
    """The simulator is still down from an earlier restart."""


class Restarter:
    """Restarts one simulator on demand: down now, up again ``down_for`` seconds later."""

    def __init__(self, simulator: Restartable) -> None:
        self.simulator = simulator
        self.up = True
        self.restarts = 0  # restarts begun
        self._comeback: asyncio.Task[None] | None = None

    async def restart(self, down_for: float, forget: bool) -> None:
        """Returns once the simulator is down (and its records forgotten if ``forget``); it listens
        again in the background. Raises :class:`Restarting` while it is down from an earlier call."""
        if not self.up:
            raise Restarting
        self.up = False
        self.restarts += 1
        try:
            await self.simulator.stop_listening()
            if forget:
                self.simulator.forget()
        finally:  # comes back even if stopping failed half-way
            self._comeback = asyncio.create_task(self._come_back(down_for))

    async def _come_back(self, down_for: float) -> None:
        await asyncio.sleep(down_for)
        while True:
            try:
                await self.simulator.listen()
                break
            except OSError as exc:  # e.g. someone else took the port meanwhile: try again
                restart_log.warning("sandbox.listen_failed", error=str(exc))
                await asyncio.sleep(0.5)
        self.up = True

    async def close(self) -> None:
        """Cancel a pending come-back (the sandbox is shutting down)."""
        if self._comeback is not None:
            self._comeback.cancel()
            await asyncio.gather(self._comeback, return_exceptions=True)


def error_response(status: int, code: str, message: str = "") -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


async def decode_body(request: web.Request, model: type[Any]) -> Any:
    try:
        return msgspec.json.decode(await request.read(), type=model)
    except msgspec.DecodeError as exc:
        raise web.HTTPBadRequest(
            text=msgspec.json.encode({"error": "invalid_request", "message": str(exc)}).decode(),
            content_type="application/json",
        ) from exc


# ---- records by reference ------------------------------------------------------------------------


class HasReference(Protocol):
    reference: str


R = TypeVar("R", bound=HasReference)


class Records(OrderedDict[str, R], Generic[R]):
    """A simulator's records by the merchant's reference, also found by the simulator's own id.

    Beyond ``limit`` the oldest are forgotten: a long load run must not grow the simulator forever.
    """

    def __init__(self, limit: int, own_id: Callable[[R], str]) -> None:
        super().__init__()
        self._limit = limit
        self._own_id = own_id
        self._by_id: dict[str, str] = {}

    def remember(self, record: R) -> None:
        self[record.reference] = record
        self._by_id[self._own_id(record)] = record.reference
        while len(self) > self._limit:
            _, oldest = self.popitem(last=False)
            self._by_id.pop(self._own_id(oldest), None)

    def find(self, ref: str) -> R | None:
        """By the merchant's reference or by the simulator's own id."""
        record = self.get(ref)
        if record is None and (reference := self._by_id.get(ref)) is not None:
            record = self.get(reference)
        return record


# ---- refunds (the bank's and the wallet's refund call is the same) -------------------------------


class RefundIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    refund_reference: Reference
    amount: Amount
    currency: Currency


@dataclass
class Refund:
    refund_id: str
    refund_reference: str
    amount: int
    status: str = "succeeded"

    def view(self) -> dict[str, Any]:
        return {
            "refund_id": self.refund_id,
            "refund_reference": self.refund_reference,
            "amount": self.amount,
            "status": self.status,
        }


class Refundable(Protocol):
    @property
    def status(self) -> str: ...

    amount: int
    currency: str
    refunded: int
    refunds: dict[str, Refund]


@dataclass(frozen=True)
class RefundRules:
    """What differs between the bank's and the wallet's refunds: the words, not the rules."""

    refundable_status: str  # the money has arrived: "settled", "paid"
    not_refundable: str  # 409 error code before that
    too_much: str  # 409 error code for more than is left
    id_prefix: str


def refund(target: Refundable, params: RefundIn, rules: RefundRules) -> web.Response:
    """Refund part of ``target``, de-duplicated on ``refund_reference`` as a bank or wallet would."""
    known = target.refunds.get(params.refund_reference)
    if known is not None:
        if known.amount != params.amount:
            return error_response(409, "duplicate_reference", "refund_reference names another refund")
        return web.json_response(known.view())
    if params.currency != target.currency:
        return error_response(400, "currency_mismatch")
    if target.status != rules.refundable_status:
        return error_response(409, rules.not_refundable)
    if target.refunded + params.amount > target.amount:
        return error_response(409, rules.too_much)
    made = Refund(rules.id_prefix + secrets.token_hex(10), params.refund_reference, params.amount)
    target.refunds[params.refund_reference] = made
    target.refunded += params.amount
    return web.json_response(made.view())


# ---- books (what a simulator charged, refunded, posted, reversed; see connectors.sandbox.books) ----

Book = dict[str, list[dict[str, Any]]]  # e.g. {"transfers": [...]}: one simulator's part of GET /books


def book_response(book: Any) -> web.Response:
    return web.Response(body=msgspec.json.encode(book), content_type="application/json")


def refundable_entry(
    target: Refundable, *, reference: str, own_id: tuple[str, str], paid: str
) -> dict[str, Any]:
    """A bank transfer or wallet order in its book: ``charged`` counts once the money has arrived
    (status ``paid``), less what was refunded since."""
    id_name, id_value = own_id
    return {
        "reference": reference,
        id_name: id_value,
        "currency": target.currency,
        "amount": target.amount,
        "status": target.status,
        "refunded": target.refunded,
        "refunds": [
            {
                "refund_reference": made.refund_reference,
                "refund_id": made.refund_id,
                "amount": made.amount,
                "status": made.status,
            }
            for made in target.refunds.values()
        ],
        "charged": target.amount - target.refunded if target.status == paid else 0,
    }


# ---- signed callbacks ----------------------------------------------------------------------------


def client_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Trust the payhub CA and present the ``sandbox`` client certificate, issuing it if missing.

    None when there is no payhub CA yet (callbacks to an HTTPS gateway will then fail and be logged).
    """
    paths = PkiPaths(settings.pki_dir)
    if not paths.ca_cert.exists():
        log.warning("sandbox.no_pki", pki=str(paths.root))
        return None
    cert, key = paths.client_cert(CLIENT_CERT_NAME), paths.client_key(CLIENT_CERT_NAME)
    if not (cert.exists() and key.exists()):
        try:
            issue_client(paths, CLIENT_CERT_NAME, tenant="sandbox", role="client")
        except (PkiError, OSError) as exc:  # e.g. a CA certificate without its key: trust only
            log.warning("sandbox.client_cert_failed", error=str(exc))
    context = ssl.create_default_context(cafile=str(paths.ca_cert))
    if cert.exists() and key.exists():
        context.load_cert_chain(cert, key)
    return context


def connector_secret(settings: Settings, connector: str) -> str | None:
    config = settings.connectors.get(connector)
    return config.secret if config is not None else None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One callback as sent, and what the receiver answered (``status`` None: no answer)."""

    url: str
    body: bytes
    status: int | None
    reply: bytes
    attempts: int


class CallbackSender:
    """Signs and POSTs callbacks, retrying failures; remembers the last deliveries for tests."""

    def __init__(
        self,
        settings: Settings,
        *,
        header: str,
        connector: str,
        retry_delays: tuple[float, ...] = RETRY_DELAYS,
    ) -> None:
        self._settings = settings
        self._header = header
        self._connector = connector
        self._secret = connector_secret(settings, connector)
        self.retry_delays = retry_delays
        self.deliveries: deque[Delivery] = deque(maxlen=1000)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._secret is None:
            log.warning("sandbox.callbacks_unsigned", connector=self._connector)
        context = client_ssl_context(self._settings)
        connector = aiohttp.TCPConnector(ssl=context) if context is not None else aiohttp.TCPConnector()
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def sign(self, body: bytes) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._secret is not None:
            headers[self._header] = sign_webhook(body, [self._secret])
        return headers

    async def send(self, url: str, payload: dict[str, Any]) -> Delivery:
        """Deliver once, retrying (with a fresh signature each time) until a 2xx or out of retries."""
        assert self._session is not None, "start() first"
        body = msgspec.json.encode(payload)
        status: int | None = None
        reply = b""
        attempts = 0
        for delay in (0.0, *self.retry_delays):
            if delay:
                await asyncio.sleep(delay)
            attempts += 1
            try:
                async with self._session.post(url, data=body, headers=self.sign(body)) as response:
                    status, reply = response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                status, reply = None, str(exc).encode()
            if status is not None and 200 <= status < 300:
                break
            log.info("sandbox.callback_retry", url=url, status=status, attempt=attempts)
        delivery = Delivery(url, body, status, reply, attempts)
        self.deliveries.append(delivery)
        return delivery


class AppSimulator:
    """An HTTP simulator around ``self.app`` (subclasses add their routes); restartable.

    ``port=None`` listens on the configured sandbox port of ``service``; ``port=0`` on a free one:
    read ``.port`` after :meth:`start`.
    """

    def __init__(
        self, settings: Settings, *, service: SandboxService, host: str | None, port: int | None
    ) -> None:
        self.host = host or settings.sandbox.host
        self.port = settings.sandbox.port(service) if port is None else port
        self.app = simulator_app()
        self._server: HttpSimulator | None = None

    async def start(self) -> Self:
        self._server = await serve_app(self.app, self.host, self.port)
        self.port = self._server.port
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    def _served(self) -> HttpSimulator:
        assert self._server is not None, "start() first"
        return self._server

    async def stop_listening(self) -> None:
        await self._served().stop_listening()

    async def listen(self) -> None:
        await self._served().listen()

    def forget(self) -> None:
        """Nothing kept by default (the FX feed); simulators with records override."""


class CallbackSimulator(AppSimulator):
    """An HTTP simulator that signs and sends callbacks, from background tasks (settling, paying)."""

    def __init__(
        self,
        settings: Settings,
        *,
        service: SandboxService,
        header: str,
        connector: str,
        host: str | None,
        port: int | None,
    ) -> None:
        super().__init__(settings, service=service, host=host, port=port)
        self._tasks: set[asyncio.Task[None]] = set()
        self.callbacks = CallbackSender(settings, header=header, connector=connector)

    async def start(self) -> Self:
        await self.callbacks.start()
        return await super().start()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await super().close()
        await self.callbacks.close()

    def forget(self) -> None:
        """Cancel the pending work (timers, callbacks); subclasses drop their records too."""
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
