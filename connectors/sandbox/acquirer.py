"""Sandbox card acquirer: ISO 8583 over TCP (2-byte length prefix) on ``[sandbox] acquirer`` (9701).

Outcomes follow the DESIGN §12 test cards: 4111…, 5555…, 6212… and any other Luhn-valid number
are approved; 4000000000000002 → 05, …9995 → 51, …0069 → 54, …0127 → N7 (CVV2 mismatch);
4000000000000119 is approved at the issuer but never answered (only a reversal undoes it: the
0400 is answered 0410 00); 4000000000000259 is answered after ``slow_delay`` (3 s).

The acquirer books every transaction by RRN and answers a repeat of an RRN it has seen with its
first answer, without charging again. A request whose field 48 is ``INQ`` is a status inquiry: it
is answered from the book (``REVERSED`` in field 48 if reversed since, response code 25 if the
RRN is unknown — and the RRN is then closed, so a late original cannot charge after "unknown").

Requests on a connection are handled concurrently; answers go out as they are ready (possibly
out of order), the client matches them by STAN. Fault knobs, set on the object by tests and
load runs: ``latency``, ``no_answer_rate``, ``drop_rate``, and per MTI ``ignore_next`` (requests
lost on the way in, not processed) and ``lose_next_answers`` (processed, answer lost on the way
out). Repeats count as their base MTI (0221 as 0220, 0401 as 0400).

The book is read in-process (:meth:`AcquirerSimulator.book_view`) and over HTTP only through the
``books`` sandbox service (``GET /books``, :mod:`connectors.sandbox.books`): the acquirer speaks TCP only.
That service also restarts it (``POST /restart``): :meth:`~AcquirerSimulator.close` and open again on
the same port; forgetting drops committed charges, which a real acquirer never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final, Literal

from config.settings import Settings
from connectors.iso8583_card.transformers import (
    CURRENCY_ALPHA,
    INQUIRY_FLAG,
    REVERSED_FLAG,
    Message,
    Original,
    WireError,
    frame_length,
    pack,
    unpack,
)
from crypto.cards import luhn_valid
from gateway.logs import get_logger

log = get_logger("connectors.sandbox.acquirer")

DECLINES: Final[dict[str, str]] = {
    "4000000000000002": "05",
    "4000000000009995": "51",
    "4000000000000069": "54",
    "4000000000000127": "N7",
}
NO_ANSWER_CARD: Final = "4000000000000119"
SLOW_CARD: Final = "4000000000000259"
SLOW_DELAY: Final = 3.0

Family = Literal["financial", "advice", "reversal"]
Kind = Literal["purchase", "authorization", "refund"]
_FAMILY: Final[dict[str, Family]] = {
    "0100": "financial",
    "0200": "financial",
    "0220": "advice",
    "0400": "reversal",
}
_BASE_MTI: Final = {"0221": "0220", "0401": "0400"}


@dataclass
class Charge:
    """One transaction in the acquirer's book, keyed by its RRN."""

    rrn: str
    kind: Kind
    amount: int
    currency: str
    merchant: str
    day: date
    response_code: str
    approval_code: str | None = None
    last4: str | None = None
    authorized: int = 0
    captured: int = 0
    refunded: int = 0
    reversed: bool = False
    reversals: int = 0  # reversals that applied to it (a repeat of an applied one does not count)
    captured_by_advice: bool = False
    original_rrn: str | None = None  # refunds: the purchase refunded

    @property
    def approved(self) -> bool:
        return self.response_code == "00"

    @property
    def status(self) -> str:
        if self.kind == "refund":
            return "refunded" if self.approved else "declined"
        if not self.approved:
            return "declined"
        if self.reversed:
            return "reversed"
        return "captured" if self.captured else "authorized"

    @property
    def charged(self) -> int:
        """Money taken from the cardholder and not given back (captured, not reversed, less refunds)."""
        if self.kind == "refund" or self.reversed:
            return 0
        return self.captured - self.refunded

    def entry(self) -> dict[str, Any]:
        """This charge as listed in the acquirer's book (``GET /books``)."""
        return {
            "rrn": self.rrn,
            "kind": self.kind,
            "currency": self.currency,
            "amount": self.amount,
            "authorized": self.authorized,
            "captured": self.captured,
            "refunded": self.refunded,
            "reversed": self.reversed,
            "status": self.status,
            "original_rrn": self.original_rrn,
            "charged": self.charged,
        }

    @property
    def held(self) -> int:
        """An open authorization's amount not captured yet."""
        if self.kind != "authorization" or self.reversed or self.captured_by_advice or not self.approved:
            return 0
        return self.authorized


@dataclass(frozen=True, slots=True)
class SettlementRecord:
    """One line of the acquirer's daily report (reconciliation input)."""

    day: date
    rrn: str
    amount: int
    currency: str
    status: str
    kind: Kind


@dataclass(slots=True)
class _Answer:
    message: Message
    silent: bool = False  # the no-answer card: booked, never answered


def _approval_code(rrn: str) -> str:
    return hashlib.sha256(f"approval:{rrn}".encode()).hexdigest()[:6].upper()


def _response_mti(mti: str) -> str:
    return f"{mti[:2]}{int(mti[2]) + 1}{mti[3]}"


class AcquirerSimulator:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        slow_delay: float = SLOW_DELAY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.host = host
        self._requested_port = port
        self.slow_delay = slow_delay
        self._clock = clock
        # Fault knobs.
        self.latency = 0.0
        self.no_answer_rate = 0.0
        self.drop_rate = 0.0
        self.ignore_next: Counter[str] = Counter()
        self.lose_next_answers: Counter[str] = Counter()
        # What happened, for tests.
        self.book: dict[str, Charge] = {}
        self.received: Counter[str] = Counter()  # by MTI as sent
        self.network: Counter[str] = Counter()  # 0800 by network code (001 sign-on, 301 echo)
        self.connections = 0
        self._answers: dict[tuple[Family, str], _Answer] = {}
        self._closed_rrns: set[tuple[Family, str]] = set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, self._requested_port, reuse_address=True
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        """Stop listening and cut every open connection (clients see the link drop)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                # Let each connection handler see its aborted transport and end on its own.
                await asyncio.gather(*self._handlers, *self._tasks, return_exceptions=True)
                if server is not None:
                    await server.wait_closed()

    # ---- restarts (connectors.sandbox.common.Restarter) ----------------------------------------

    async def stop_listening(self) -> None:
        self._requested_port = self.port  # come back on this port, even if the OS chose it
        await self.close()

    async def listen(self) -> None:
        await self.open()

    def forget(self) -> None:
        """Drop the book and the answers by RRN (fault knobs and traffic counters stay)."""
        self.book.clear()
        self._answers.clear()
        self._closed_rrns.clear()

    # ---- connections -------------------------------------------------------------------------

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            while True:
                prefix = await reader.readexactly(2)
                payload = await reader.readexactly(frame_length(prefix))
                try:
                    message = unpack(payload)
                except WireError as exc:
                    log.warning("acquirer.bad_message", error=str(exc))
                    return  # a peer that sends garbage is cut off, as a real switch would
                if self.drop_rate > 0 and random.random() < self.drop_rate:  # noqa: S311 - test traffic
                    return
                task = asyncio.create_task(self._answer(message, writer))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            if handler is not None:
                self._handlers.discard(handler)
            writer.transport.abort()

    async def _answer(self, message: Message, writer: asyncio.StreamWriter) -> None:
        response, delay = self.handle(message)
        if response is None:
            return
        delay += self.latency
        if delay > 0:
            await asyncio.sleep(delay)
        if not writer.is_closing():
            writer.write(pack(response))

    # ---- message handling (synchronous: the book changes when a request arrives) --------------

    def handle(self, message: Message) -> tuple[Message | None, float]:
        """The answer to one request and how long to wait before sending it (None: no answer)."""
        raw_mti = message.get("t", "")
        self.received[raw_mti] += 1
        mti = _BASE_MTI.get(raw_mti, raw_mti)
        if self.ignore_next[mti] > 0:
            self.ignore_next[mti] -= 1
            return None, 0.0
        if self.no_answer_rate > 0 and random.random() < self.no_answer_rate:  # noqa: S311 - test traffic
            return None, 0.0
        delay = 0.0
        if mti == "0800":
            response: Message | None = self._network(message)
        elif mti not in _FAMILY or "37" not in message:
            response = self._reply(message, "12") if len(mti) == 4 and mti.isdigit() else None
        elif message.get("48") == INQUIRY_FLAG:
            response = self._inquiry(_FAMILY[mti], message)
        else:
            response, delay = self._once(_FAMILY[mti], message)
        if response is not None and self.lose_next_answers[mti] > 0:
            self.lose_next_answers[mti] -= 1
            return None, 0.0
        return response, delay

    def _network(self, message: Message) -> Message:
        code = message.get("70", "")
        self.network[code] += 1
        return {
            "t": "0810",
            "7": message.get("7", ""),
            "11": message.get("11", ""),
            "39": "00" if code in ("001", "002", "301") else "12",
            "70": code,
        }

    def _reply(self, request: Message, code: str, approval: str | None = None) -> Message:
        response = {
            "t": _response_mti(_BASE_MTI.get(request["t"], request["t"])),
            "39": code,
        }
        for field in ("3", "4", "7", "11", "37", "41", "42", "49"):
            if field in request:
                response[field] = request[field]
        if approval is not None:
            response["38"] = approval
        return response

    def _once(self, family: Family, message: Message) -> tuple[Message | None, float]:
        """Answer a request once per RRN: a repeat gets the first answer and changes nothing."""
        key = (family, message["37"])
        if key in self._closed_rrns:
            return self._reply(message, "25"), 0.0
        known = self._answers.get(key)
        if known is not None:
            return (None if known.silent else self._restamp(known.message, message)), 0.0
        delay = 0.0
        silent = False
        if family == "financial" and message.get("3", "").startswith("20"):
            response = self._refund(message)
        elif family == "financial":
            response, delay, silent = self._purchase(message)
        elif family == "advice":
            response = self._advice(message)
        else:
            response = self._reversal(message)
        self._answers[key] = _Answer(response, silent)
        return (None if silent else response), delay

    def _restamp(self, stored: Message, request: Message) -> Message:
        answer = dict(stored)
        answer["11"] = request.get("11", "")
        answer["7"] = request.get("7", answer.get("7", ""))
        return answer

    def _inquiry(self, family: Family, message: Message) -> Message:
        rrn = message["37"]
        known = self._answers.get((family, rrn))
        if known is None:
            # Never seen: say so, and close the RRN so a late original cannot charge after that.
            self._closed_rrns.add((family, rrn))
            return self._reply(message, "25")
        answer = self._restamp(known.message, message)
        charge = self.book.get(rrn)
        if family != "reversal" and charge is not None and charge.reversed:
            answer["48"] = REVERSED_FLAG
        return answer

    def _base(self, message: Message, kind: Kind, code: str) -> Charge:
        amount_text = message.get("4", "")
        return Charge(
            rrn=message["37"],
            kind=kind,
            amount=int(amount_text) if amount_text.isdigit() else 0,
            currency=CURRENCY_ALPHA.get(message.get("49", ""), "???"),
            merchant=message.get("42", "").strip(),
            day=self._clock().date(),
            response_code=code,
        )

    def _decide(self, message: Message) -> tuple[str, float, bool]:
        """Issuer decision for a purchase/authorization: (response code, answer delay, silent)."""
        pan = message.get("2", "")
        if message.get("49", "") not in CURRENCY_ALPHA or not message.get("4", "").isdigit():
            return "13", 0.0, False
        if pan in DECLINES:
            return DECLINES[pan], 0.0, False
        if pan == NO_ANSWER_CARD:
            return "00", 0.0, True
        if pan == SLOW_CARD:
            return "00", self.slow_delay, False
        if not (pan.isdigit() and luhn_valid(pan)):
            return "14", 0.0, False
        expiry = message.get("14", "")
        now = self._clock()
        if not expiry.isdigit() or (2000 + int(expiry[:2]), int(expiry[2:])) < (now.year, now.month):
            return "54", 0.0, False
        return "00", 0.0, False

    def _purchase(self, message: Message) -> tuple[Message, float, bool]:
        code, delay, silent = self._decide(message)
        kind: Kind = "purchase" if message["t"] == "0200" else "authorization"
        charge = self._base(message, kind, code)
        pan = message.get("2", "")
        charge.last4 = pan[-4:] if pan else None
        approval = None
        if charge.approved:
            approval = _approval_code(charge.rrn)
            charge.approval_code = approval
            charge.authorized = charge.amount
            charge.captured = charge.amount if kind == "purchase" else 0
        self.book[charge.rrn] = charge
        return self._reply(message, code, approval), delay, silent

    def _target(self, message: Message) -> Charge | None:
        try:
            original = Original.decode(message.get("90", ""))
        except WireError:
            return None
        return self.book.get(original.rrn)

    def _refund(self, message: Message) -> Message:
        target = self._target(message)
        code = "00"
        refund = self._base(message, "refund", code)
        if target is None or not target.approved or target.kind == "refund":
            code = "25"
        elif target.reversed or refund.currency != target.currency:
            code = "12"
        elif refund.amount <= 0 or target.refunded + refund.amount > target.captured:
            code = "13"
        refund.response_code = code
        if code == "00" and target is not None:
            target.refunded += refund.amount
            refund.original_rrn = target.rrn
        self.book[refund.rrn] = refund
        return self._reply(message, code, _approval_code(refund.rrn) if code == "00" else None)

    def _advice(self, message: Message) -> Message:
        target = self._target(message)
        amount_text = message.get("4", "")
        amount = int(amount_text) if amount_text.isdigit() else 0
        if target is None or not target.approved:
            code = "25"
        elif target.kind != "authorization" or target.reversed or target.captured_by_advice:
            code = "12"
        elif not 0 < amount <= target.authorized:
            code = "13"
        else:
            code = "00"
            target.captured = amount
            target.captured_by_advice = True
        return self._reply(message, code, target.approval_code if target and code == "00" else None)

    def _reversal(self, message: Message) -> Message:
        try:
            original = Original.decode(message.get("90", ""))
        except WireError:
            return self._reply(message, "12")
        target = self.book.get(original.rrn)
        if target is None:
            # Reversed before (or instead of) arriving: close the RRN so a late original is refused.
            self._closed_rrns.add(("financial", original.rrn))
            return self._reply(message, "00")
        if not target.approved or target.reversed:
            return self._reply(message, "00")
        if target.kind == "refund" or target.captured_by_advice or target.refunded:
            return self._reply(message, "12")
        target.reversed = True
        target.reversals += 1
        return self._reply(message, "00")

    # ---- reports -----------------------------------------------------------------------------

    def book_view(self) -> dict[str, list[dict[str, Any]]]:
        """Every transaction booked (declined ones too), in the order they arrived, by RRN.

        The acquirer keeps its whole book for the life of the process (no limit, unlike the bank's
        and the wallet's records)."""
        return {"charges": [charge.entry() for charge in self.book.values()]}

    def daily_records(self, day: date) -> list[SettlementRecord]:
        """The day's transactions as the acquirer reports them for reconciliation."""
        records = []
        for charge in self.book.values():
            if charge.day != day:
                continue
            status = charge.status
            amount = charge.captured if status == "captured" else charge.amount
            if status == "authorized":
                amount = charge.authorized
            records.append(SettlementRecord(day, charge.rrn, amount, charge.currency, status, charge.kind))
        return records


async def start(settings: Settings) -> AcquirerSimulator:
    simulator = AcquirerSimulator(settings.sandbox.host, settings.sandbox.acquirer)
    await simulator.open()
    return simulator
