"""Telecom top-up simulator: a CN top-up aggregator on ``settings.sandbox.telecom`` (127.0.0.1:9703).

Routes (wire details in :mod:`connectors.telecom_topup.transformers`):

* ``GET /operators/lookup?msisdn=+86…`` → the operator by number prefix (China Mobile, China Unicom,
  China Telecom) and the amounts it sells: China Mobile and China Telecom a fixed list (1000, 3000,
  5000, 10000 fen), China Unicom a range (1000 to 50000 fen in steps of 100). 404 ``operator_not_found``
  for ``+8613800000000`` (DESIGN §12: no operator), for unknown prefixes and for non-CN numbers.
* ``POST /topups`` ``{reference, msisdn, amount, currency}`` → 201 and the top-up; the same reference
  and fields again → 200 and the original; the reference with other fields → 409 ``duplicate_reference``.
* ``GET /topups/{reference}`` → the top-up (404 ``not_found``).
* ``GET /reports/{YYYY-MM-DD}`` → the day's top-ups (the aggregator's day is UTC+8).

Every request and answer is signed: ``X-Signature`` = hex HMAC-SHA256 of the body (of the request
target for GETs) under ``[connectors.telecom_topup] secret``; a bad request signature gets 401
``signature_invalid``.

Statuses: CREATED → SUBMITTED → COMPLETED, or REJECTED. A top-up completes at once (the POST answers
COMPLETED), except for numbers ending ``7777``, which stay SUBMITTED for ``ASYNC_COMPLETION`` seconds
and then complete (the pending path). Numbers in :attr:`TelecomState.reject_msisdns` are REJECTED by
the operator (a test knob). Fault knobs: ``POST /faults``; :data:`TELECOM_STATE` in-process.

Book: ``GET /book`` (unsigned, exempt from the fault knobs) → ``{"topups": [...]}``, every top-up in the
order it arrived, by reference, with the status in the checker's words (COMPLETED → posted, CREATED and
SUBMITTED → pending, REJECTED → rejected) and ``posted`` (the amount once completed, else 0). ``biller`` is
the hub's ``bil_cn_mobile``, the one biller the hub's telecom connector serves (every operator is behind
it). A SUBMITTED top-up due to complete is advanced first, as on any other read. The simulator keeps
every top-up for the life of the process (no limit). See :mod:`connectors.sandbox.books`.
"""

from __future__ import annotations

import hmac
import itertools
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson
from aiohttp import web

from config.settings import ConnectorSettings, Settings
from connectors.sandbox.common import Book, HttpSimulator, book_response, serve_app, simulator_app
from connectors.telecom_topup.transformers import BILLER as HUB_BILLER
from crypto.signatures import hmac_sha256_hex

DEV_SECRET = "dev-telecom-topup-secret"  # noqa: S105 - sandbox only, when the config sets none
ASYNC_COMPLETION = 1.0
CN_TIME = timezone(timedelta(hours=8), "UTC+8")
NO_OPERATOR = frozenset({"+8613800000000"})
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
_CN_MOBILE = re.compile(r"\+861[0-9]{10}")
_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
FIXED = {"type": "fixed", "values": [1000, 3000, 5000, 10000]}
RANGE = {"type": "range", "min": 1000, "max": 50000, "step": 100}


@dataclass(frozen=True, slots=True)
class SandboxOperator:
    code: str
    name: str
    denominations: Mapping[str, Any]

    def sells(self, amount: int) -> bool:
        d = self.denominations
        if d["type"] == "fixed":
            return amount in d["values"]
        return bool(d["min"] <= amount <= d["max"] and (amount - d["min"]) % d["step"] == 0)


_CMCC = SandboxOperator("CMCC", "China Mobile", FIXED)
_CUCC = SandboxOperator("CUCC", "China Unicom", RANGE)
_CTCC = SandboxOperator("CTCC", "China Telecom", FIXED)
_PREFIXES = (
    (_CMCC, "134 135 136 137 138 139 147 150 151 152 157 158 159 172 178 182 183 184 187 188 195 197 198"),
    (_CUCC, "130 131 132 145 155 156 166 171 175 176 185 186 196"),
    (_CTCC, "133 149 153 173 174 177 180 181 189 190 191 193 199"),
)
PREFIXES: Mapping[str, SandboxOperator] = {
    prefix: operator for operator, prefixes in _PREFIXES for prefix in prefixes.split()
}


def operator_for(msisdn: str) -> SandboxOperator | None:
    if msisdn in NO_OPERATOR or not _CN_MOBILE.fullmatch(msisdn):
        return None
    return PREFIXES.get(msisdn[3:6])


@dataclass(slots=True)
class TopUp:
    reference: str
    msisdn: str
    amount: int
    currency: str
    operator: SandboxOperator
    status: str
    operator_reference: str
    day: date
    completes_at: float | None = None  # monotonic time a SUBMITTED top-up completes

    def advance(self, now: float) -> None:
        if self.status == "SUBMITTED" and self.completes_at is not None and now >= self.completes_at:
            self.status = "COMPLETED"

    def wire(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "msisdn": self.msisdn,
            "amount": self.amount,
            "currency": self.currency,
            "operator": self.operator.code,
            "status": self.status,
            "operator_reference": self.operator_reference,
        }


@dataclass
class TelecomState:
    secret: bytes
    async_completion: float = ASYNC_COMPLETION
    topups: dict[str, TopUp] = field(default_factory=dict)
    reject_msisdns: set[str] = field(default_factory=set)
    tamper_answers: bool = False  # alter answers after signing (tests)
    monotonic: Callable[[], float] = time.monotonic
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    serials: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


TELECOM_STATE = web.AppKey("telecom_state", TelecomState)


class _TopupRequest(msgspec.Struct, forbid_unknown_fields=True):
    reference: str
    msisdn: str
    amount: int
    currency: str


def _reply(state: TelecomState, obj: Mapping[str, Any], status: int = 200) -> web.Response:
    body = orjson.dumps(obj)
    signature = hmac_sha256_hex(state.secret, body)
    if state.tamper_answers:
        body = body[:-1] + b',"altered":true}'  # still a JSON object, no longer what was signed
    return web.Response(
        body=body, status=status, content_type="application/json", headers={"X-Signature": signature}
    )


def _error(state: TelecomState, status: int, code: str, message: str) -> web.Response:
    return _reply(state, {"error": code, "message": message}, status)


def _signed_by_hub(state: TelecomState, request: web.Request, body: bytes) -> bool:
    message = body if request.method == "POST" else request.raw_path.encode()
    expected = hmac_sha256_hex(state.secret, message).encode()
    return hmac.compare_digest(expected, request.headers.get("X-Signature", "").encode())


async def lookup(request: web.Request) -> web.Response:
    state = request.app[TELECOM_STATE]
    if not _signed_by_hub(state, request, b""):
        return _error(state, 401, "signature_invalid", "X-Signature does not match the request target")
    msisdn = request.query.get("msisdn", "")
    if not _E164.fullmatch(msisdn):
        return _error(state, 400, "invalid_msisdn", "msisdn must be E.164: +<country code><number>")
    operator = operator_for(msisdn)
    if operator is None:
        return _error(state, 404, "operator_not_found", "no operator serves this number")
    return _reply(
        state,
        {
            "msisdn": msisdn,
            "operator": operator.code,
            "operator_name": operator.name,
            "country": "CN",
            "currency": "CNY",
            "denominations": operator.denominations,
        },
    )


async def create_topup(request: web.Request) -> web.Response:
    state = request.app[TELECOM_STATE]
    body = await request.read()
    if not _signed_by_hub(state, request, body):
        return _error(state, 401, "signature_invalid", "X-Signature does not match the body")
    try:
        asked = msgspec.json.decode(body, type=_TopupRequest)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _error(state, 400, "invalid_request", str(exc))
    if not _REFERENCE.fullmatch(asked.reference):
        return _error(state, 400, "invalid_request", "reference: 1 to 64 of [A-Za-z0-9_-]")
    known = state.topups.get(asked.reference)
    if known is not None:
        if (known.msisdn, known.amount, known.currency) != (asked.msisdn, asked.amount, asked.currency):
            return _error(state, 409, "duplicate_reference", "reference already used for another top-up")
        known.advance(state.monotonic())
        return _reply(state, known.wire())
    if asked.currency != "CNY":
        return _error(state, 400, "currency_not_supported", "top-ups are in CNY")
    if not _E164.fullmatch(asked.msisdn):
        return _error(state, 400, "invalid_msisdn", "msisdn must be E.164")
    operator = operator_for(asked.msisdn)
    if operator is None:
        return _error(state, 404, "operator_not_found", "no operator serves this number")
    if not operator.sells(asked.amount):
        return _error(state, 400, "amount_not_allowed", f"{operator.name} sells {operator.denominations}")
    topup = TopUp(
        asked.reference,
        asked.msisdn,
        asked.amount,
        asked.currency,
        operator,
        "CREATED",
        f"{operator.code}{next(state.serials):010d}",
        state.clock().astimezone(CN_TIME).date(),
    )
    state.topups[asked.reference] = topup
    topup.status = "SUBMITTED"  # handed to the operator
    if asked.msisdn in state.reject_msisdns:
        topup.status = "REJECTED"
    elif asked.msisdn.endswith("7777"):
        topup.completes_at = state.monotonic() + state.async_completion
    else:
        topup.status = "COMPLETED"
    return _reply(state, topup.wire(), 201)


async def get_topup(request: web.Request) -> web.Response:
    state = request.app[TELECOM_STATE]
    if not _signed_by_hub(state, request, b""):
        return _error(state, 401, "signature_invalid", "X-Signature does not match the request target")
    topup = state.topups.get(request.match_info["reference"])
    if topup is None:
        return _error(state, 404, "not_found", "no top-up with this reference")
    topup.advance(state.monotonic())
    return _reply(state, topup.wire())


async def report(request: web.Request) -> web.Response:
    state = request.app[TELECOM_STATE]
    if not _signed_by_hub(state, request, b""):
        return _error(state, 401, "signature_invalid", "X-Signature does not match the request target")
    try:
        day = date.fromisoformat(request.match_info["day"])
    except ValueError:
        return _error(state, 400, "invalid_request", "date must be YYYY-MM-DD")
    now = state.monotonic()
    items = []
    for topup in state.topups.values():
        if topup.day == day:
            topup.advance(now)
            items.append(
                {k: v for k, v in topup.wire().items() if k not in ("operator", "operator_reference")}
            )
    total = sum(item["amount"] for item in items if item["status"] == "COMPLETED")
    return _reply(state, {"date": day.isoformat(), "count": len(items), "total": total, "items": items})


BOOK_STATUS: Mapping[str, str] = {"COMPLETED": "posted", "REJECTED": "rejected"}


def book_entry(topup: TopUp) -> dict[str, Any]:
    status = BOOK_STATUS.get(topup.status, "pending")
    return {
        "reference": topup.reference,
        "biller": HUB_BILLER.id,
        "msisdn": topup.msisdn,
        "amount": topup.amount,
        "currency": topup.currency,
        "status": status,
        "posted": topup.amount if status == "posted" else 0,
    }


def book_view(state: TelecomState) -> Book:
    """The aggregator's book (``GET /book``): every top-up, oldest first."""
    now = state.monotonic()
    entries = []
    for topup in state.topups.values():
        topup.advance(now)
        entries.append(book_entry(topup))
    return {"topups": entries}


async def book(request: web.Request) -> web.Response:
    return book_response(book_view(request.app[TELECOM_STATE]))


def telecom_app(settings: Settings) -> web.Application:
    config = settings.connectors.get("telecom_topup", ConnectorSettings())
    state = TelecomState(secret=(config.secret or DEV_SECRET).encode())
    app = simulator_app(forget=state.topups.clear)
    app[TELECOM_STATE] = state
    app.router.add_get("/operators/lookup", lookup)
    app.router.add_post("/topups", create_topup)
    app.router.add_get("/topups/{reference}", get_topup)
    app.router.add_get("/reports/{day}", report)
    app.router.add_get("/book", book)
    return app


async def start(settings: Settings) -> HttpSimulator:
    return await serve_app(telecom_app(settings), settings.sandbox.host, settings.sandbox.telecom)
