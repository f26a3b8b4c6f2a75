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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Self

from aiohttp import web

from config.settings import SandboxService, Settings
from connectors.sandbox import telecom, utility
from connectors.sandbox.acquirer import AcquirerSimulator
from connectors.sandbox.bank import BankSandbox
from connectors.sandbox.common import Book, HttpSimulator, Simulator, book_response, bound_port, serve_app
from connectors.sandbox.ewallet import EwalletSandbox

BookReader = Callable[[], Book]
# The order of the parts in GET /books.
BOOKED: Final[tuple[SandboxService, ...]] = ("acquirer", "bank", "ewallet", "utility", "telecom")


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
        self.app = web.Application()  # no fault middleware: a checker can always read the books
        self.app.router.add_get("/books", self._books)
        self._server: HttpSimulator | None = None

    def books(self) -> dict[str, Any]:
        return {service: read() for service, read in self.readers.items()}

    async def start(self) -> Self:
        self._server = await serve_app(self.app, self.host, self.port)
        self.port = bound_port(self._server, self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            await self._server.close()

    async def _books(self, request: web.Request) -> web.Response:
        return book_response(self.books())


async def start(settings: Settings, simulators: Mapping[SandboxService, Simulator]) -> BooksService:
    return await BooksService(settings, simulators).start()
