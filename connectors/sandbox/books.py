"""The ``books`` sandbox service on ``[sandbox] books`` (9708): every simulator's book in one answer.

A conservation checker compares the hub's ledger with what the processors and billers themselves
booked. ``GET /books`` (plain HTTP, no fault knobs, no signature) answers, for the simulators running
in this process::

    {"acquirer": {"charges":  [{rrn, kind, currency, amount, authorized, captured, refunded, reversed,
                                status, original_rrn, charged}]},
     "bank":     {"transfers": [{reference, transfer_id, currency, amount, status, refunded,
                                 refunds: [{refund_reference, refund_id, amount, status}], charged}]},
     "ewallet":  {"orders":    [{reference, order_id, currency, amount, status, refunded, refunds, charged}]},
     "utility":  {"postings":  [{reference, biller, account, amount, currency, status, posted}]},
     "telecom":  {"topups":    [{reference, biller, msisdn, amount, currency, status, posted}]}}

Amounts are integers in minor units; lists are in the order the simulator first saw each reference.
``charged`` is money taken from the payer and not given back: the acquirer's ``Charge.charged``
(captured, not reversed, less refunds; 0 for refunds and declines), a transfer's or order's amount less
its refunds once ``settled`` / ``paid`` (else 0). ``posted`` is the amount posted at the biller and not
reversed (else 0). Statuses: acquirer ``authorized|captured|reversed|declined|refunded``; bank
``pending|settled|rejected``; wallet ``unpaid|paid|closed`` (its own words); utility
``posted|rejected|reversed|pending``; telecom ``posted|rejected|pending``. Utility reversal tombstones
(a reversal for a reference never paid) are listed, as ``reversed`` with ``account`` "" and ``amount``
and ``posted`` 0.

Each HTTP simulator also answers ``GET /book`` on its own port with its part (``{"transfers": [...]}``
from the bank, …); the acquirer speaks ISO 8583 over TCP only, so its book is reachable only here.

Limits: a book is what the simulator remembers. The bank and the wallet forget their oldest records
beyond ``MAX_TRANSFERS`` / ``MAX_ORDERS`` (100,000 each), so after a longer run their books lack the
oldest references; the acquirer, the utility biller and the telecom aggregator keep everything for the
life of the process. Books are in memory: a restarted sandbox starts with empty books.

Restarts: the same port restarts one simulator, as a processor or biller restarts::

    POST /restart          {"service": "utility", "down_for": 8.0, "forget": true}
                           → 202 {"service", "down_for", "forget"}: the simulator is down now (not
                             listening: connections refused; open connections cut) and listens again
                             on its port after ``down_for`` seconds, in the background
                           → 400 {"error": "invalid_request", "message"} unknown service, bad types,
                             ``down_for`` not in 0..60
                           → 409 {"error": "restarting", "message"} still down from an earlier restart
    GET  /restart/{service} → 200 {"service", "up": bool, "restarts": n (restarts begun)} · 404

``service`` is any simulator of :data:`connectors.sandbox.runner.SIMULATORS` running in this process.
``forget: false`` keeps everything in memory; ``forget: true`` gives the simulator a fresh, empty state
(its book, records, pending transfers or orders and their timers and callbacks are gone; configuration,
keys and fault knobs stay), and ``GET /books`` then lists only what it saw since. Forgetting is meant
for billers (utility, telecom) that lose their un-answered postings in a crash; this in-process
restart does not model an acquirer losing *committed* records, and a test forgetting the acquirer's or
the bank's book breaks conservation on purpose. See :class:`connectors.sandbox.common.Restarter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Self

import msgspec
from aiohttp import web

from config.settings import SandboxService, Settings
from connectors.sandbox import telecom, utility
from connectors.sandbox.acquirer import AcquirerSimulator
from connectors.sandbox.bank import BankSandbox
from connectors.sandbox.common import (
    Book,
    HttpSimulator,
    Restartable,
    Restarter,
    Restarting,
    Simulator,
    book_response,
    bound_port,
    decode_body,
    error_response,
    serve_app,
)
from connectors.sandbox.ewallet import EwalletSandbox
from gateway.logs import get_logger

BookReader = Callable[[], Book]
# The order of the parts in GET /books.
BOOKED: Final[tuple[SandboxService, ...]] = ("acquirer", "bank", "ewallet", "utility", "telecom")
MAX_DOWN_FOR: Final = 60.0

log = get_logger("connectors.sandbox")


class RestartIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    service: str
    down_for: Annotated[float, msgspec.Meta(ge=0, le=MAX_DOWN_FOR)]
    forget: bool


def reader(simulator: Simulator) -> BookReader | None:
    """How to read this simulator's book, or None if it keeps none (FX feed, message sink)."""
    if isinstance(simulator, AcquirerSimulator | BankSandbox | EwalletSandbox):
        return simulator.book_view
    if isinstance(simulator, HttpSimulator):
        app = simulator.runner.app
        if utility.UTILITY_STATE in app:
            state = app[utility.UTILITY_STATE]
            return lambda: utility.book_view(state)
        if telecom.TELECOM_STATE in app:
            tstate = app[telecom.TELECOM_STATE]
            return lambda: telecom.book_view(tstate)
    return None


class BooksService:
    """``GET /books`` over the given simulators (by service name; those without a book are skipped).

    ``port=None`` listens on ``[sandbox] books``; ``port=0`` on a free one: read ``.port`` after
    :meth:`start`."""

    def __init__(
        self,
        settings: Settings,
        simulators: Mapping[SandboxService, Simulator],
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        self.host = host or settings.sandbox.host
        self.port = settings.sandbox.books if port is None else port
        self.readers: dict[str, BookReader] = {}
        for service in BOOKED:
            simulator = simulators.get(service)
            read = reader(simulator) if simulator is not None else None
            if read is not None:
                self.readers[service] = read
        self.restarters: dict[str, Restarter] = {
            service: Restarter(simulator)
            for service, simulator in simulators.items()
            if isinstance(simulator, Restartable)
        }
        self.app = web.Application()  # no fault middleware: a checker can always read the books
        self.app.router.add_get("/books", self._books)
        self.app.router.add_post("/restart", self._restart)
        self.app.router.add_get("/restart/{service}", self._restart_state)
        self._server: HttpSimulator | None = None

    def books(self) -> dict[str, Any]:
        return {service: read() for service, read in self.readers.items()}

    async def start(self) -> Self:
        self._server = await serve_app(self.app, self.host, self.port)
        self.port = bound_port(self._server, self.port)
        return self

    async def close(self) -> None:
        for restarter in self.restarters.values():
            await restarter.close()  # a simulator still down stays down: the sandbox is stopping
        if self._server is not None:
            await self._server.close()

    async def _books(self, request: web.Request) -> web.Response:
        return book_response(self.books())

    async def _restart(self, request: web.Request) -> web.Response:
        params: RestartIn = await decode_body(request, RestartIn)
        restarter = self.restarters.get(params.service)
        if restarter is None:
            known = ", ".join(self.restarters)
            return error_response(400, "invalid_request", f"service: one of {known}")
        try:
            await restarter.restart(params.down_for, params.forget)
        except Restarting:
            return error_response(409, "restarting", f"{params.service} is still down")
        log.info("sandbox.restart", service=params.service, down_for=params.down_for, forget=params.forget)
        answer = {"service": params.service, "down_for": params.down_for, "forget": params.forget}
        return web.json_response(answer, status=202)

    async def _restart_state(self, request: web.Request) -> web.Response:
        service = request.match_info["service"]
        restarter = self.restarters.get(service)
        if restarter is None:
            return error_response(404, "unknown_service", service)
        answer = {"service": service, "up": restarter.up, "restarts": restarter.restarts}
        return web.json_response(answer)


async def start(settings: Settings, simulators: Mapping[SandboxService, Simulator]) -> BooksService:
    return await BooksService(settings, simulators).start()
