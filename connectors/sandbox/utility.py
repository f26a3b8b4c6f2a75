"""Utility biller simulator: a 生活缴费 platform for CN power, water, gas, broadband and credit-card
repayment (CNY) and US power (USD), on ``settings.sandbox.utility`` (127.0.0.1:9702).

Protocol (the connector side is :mod:`connectors.utility_biller`):

* ``POST /api/query`` ``{biller, account_number}`` → the open bill (查询)
* ``POST /api/pay`` ``{biller, account_number, reference, amount, currency[, bill_ref]}`` (缴费)
* ``POST /api/status`` ``{biller, reference}`` → ``status`` ∈ SUCCESS, FAILED, REVERSED
* ``POST /api/reverse`` ``{biller, reference}`` (冲正)
* ``GET /api/recon/{biller}/{YYYY-MM-DD}?<signed envelope>`` → the day's reconciliation file as text
  (``count|total`` then ``date|serial|account|amount|status``), signed in ``X-Sign`` headers over
  ``{biller, date, digest = SHA-256 hex of the body, merchant_id, timestamp}``.

Requests are ``application/x-www-form-urlencoded``; answers are JSON objects of strings, HTTP 200
even for refusals (``code`` says what happened). Both carry ``merchant_id``, ``timestamp`` (RFC 3339,
±300 s accepted), ``sign_type=RSA2`` and ``sign`` (RSA-SHA256 over ``crypto.signatures.canonical_params``).
The simulator verifies the hub's signature with ``hub_utility.pub`` and signs with
``utility_biller.pem`` (dev keys under ``$PAYHUB_HOME/keys/sandbox/``, created on first use).
Error codes: ``SYS_SIGN_INVALID``, ``SYS_TIMESTAMP_INVALID``, ``SYS_MERCHANT_INVALID``,
``SYS_PARAM_INVALID``, ``SYS_BILLER_UNKNOWN``; ``QUERY_NO_DUES``, ``QUERY_ACCOUNT_INVALID``;
``PAY_REJECTED``, ``PAY_NO_DUES``, ``PAY_AMOUNT_NOT_ALLOWED``, ``PAY_DUPLICATE`` (a reference reused
for a different payment), ``PAY_BILL_REQUIRED``, ``PAY_BILL_MISMATCH``, ``PAY_CURRENCY_MISMATCH``,
``PAY_ACCOUNT_INVALID``, ``PAY_SERVICE_WINDOW_CLOSED``; ``STATUS_NOT_FOUND``; ``REVERSE_NOT_ALLOWED``;
``RECON_NOT_READY``.

Test data (DESIGN §12, by the account number's last four digits): ``0000`` no dues at query and pay;
``9999`` the pay is rejected (``PAY_REJECTED``); ``7777`` the pay is recorded as successful but answered
only after the connector's read timeout + 2 s, so the connector sees a timeout and a later status
inquiry says SUCCESS; anything else has one open bill (amount derived from the account, due in 10 days),
which stays open after payment so that test accounts behave the same every time.

Idempotency: the reference (our attempt id) identifies a payment. Paying it again with the same fields
answers the original result (same serial); with different fields, ``PAY_DUPLICATE``. A reversal of a
reference never seen is recorded, so the original arriving late is not posted (answered REVERSED).
Reversal is allowed on the day of the posting only (after the cut-off: ``REVERSE_NOT_ALLOWED``).
The CN billers' day is UTC+8, the US biller's UTC-5 (no DST in the sandbox).

Knobs: ``POST /faults`` (latency, error rate, dropped connections); in-process, the
:class:`UtilityState` under :data:`UTILITY_STATE` (``window_closed``, ``tamper_answers``).

Book: ``GET /book`` (unsigned, exempt from the fault knobs) → ``{"postings": [...]}``, every posting in
the order it arrived, by reference, with the hub's biller id (``bil_cn_power``), the biller's currency,
the status in the checker's words (SUCCESS → posted, FAILED → rejected, REVERSED → reversed, anything
else → pending) and ``posted`` (the amount while posted and not reversed, else 0). A reversal of a
reference never paid (its tombstone) is listed too: status ``reversed``, ``account`` "", ``amount`` and
``posted`` 0. The simulator keeps every posting for the life of the process (no limit).
See :mod:`connectors.sandbox.books`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from config.settings import ConnectorSettings, Settings
from connectors.sandbox.common import Book, HttpSimulator, book_response, serve_app, simulator_app
from connectors.utility_biller.client import DEV_MERCHANT_ID, dev_keys
from connectors.utility_biller.transformers import BILLERS as HUB_BILLERS
from crypto import signatures

TIMESTAMP_TOLERANCE = timedelta(seconds=300)
SLOW_ANSWER_MARGIN = 2.0  # seconds beyond the connector's read timeout for 7777 accounts
BILL_DUE_IN = timedelta(days=10)
_REFERENCE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ACCOUNT = re.compile(r"[0-9]{10}")
_AMOUNT = re.compile(r"[1-9][0-9]{0,14}")
CN_TIME = timezone(timedelta(hours=8), "UTC+8")
US_TIME = timezone(timedelta(hours=-5), "UTC-5")


@dataclass(frozen=True, slots=True)
class SandboxBiller:
    code: str
    currency: str
    tz: timezone
    exactness: str  # exact, exact_or_above, exact_or_below, any
    bill_required: bool
    names: tuple[str, ...]
    min_amount: int = 1


_CN_NAMES = ("Li Lei", "Han Meimei", "Wang Xiaoming", "张伟")
_US_NAMES = ("John Smith", "Mary Johnson", "Robert Brown")
BILLERS: Mapping[str, SandboxBiller] = {
    b.code: b
    for b in (
        SandboxBiller("CN_POWER", "CNY", CN_TIME, "exact_or_above", True, _CN_NAMES),
        SandboxBiller("CN_WATER", "CNY", CN_TIME, "exact_or_above", True, _CN_NAMES),
        SandboxBiller("CN_GAS", "CNY", CN_TIME, "exact_or_above", True, _CN_NAMES),
        SandboxBiller("CN_BROADBAND", "CNY", CN_TIME, "exact", True, _CN_NAMES),
        SandboxBiller("CN_CREDITCARD", "CNY", CN_TIME, "any", False, _CN_NAMES),
        SandboxBiller("US_POWER", "USD", US_TIME, "exact_or_above", True, _US_NAMES),
    )
}


def settlement_day(biller: str, now: datetime | None = None) -> date:
    """The biller's business day at ``now`` (its local date): the day a posting is reconciled on."""
    return (now or datetime.now(UTC)).astimezone(BILLERS[biller].tz).date()


@dataclass(frozen=True, slots=True)
class OpenBill:
    bill_ref: str
    amount_due: int
    due_date: date
    customer_name: str


def open_bill(biller: SandboxBiller, account: str, today: date) -> OpenBill:
    """The account's bill for this month: stable for a given account and month."""
    period = today.strftime("%Y%m")
    digest = int.from_bytes(hashlib.sha256(f"{biller.code}:{account}:{period}".encode()).digest()[:8])
    return OpenBill(
        bill_ref=bill_ref(biller, account, today),
        amount_due=1000 + digest % 49001,  # 10.00 to 500.00
        due_date=today + BILL_DUE_IN,
        customer_name=biller.names[int(account) % len(biller.names)],
    )


def bill_ref(biller: SandboxBiller, account: str, day: date) -> str:
    return f"{biller.code}-{day.strftime('%Y%m')}-{account}"


@dataclass(slots=True)
class Posting:
    reference: str
    biller: str
    account: str
    amount: int
    status: str  # SUCCESS, FAILED, REVERSED
    serial: str
    day: date
    fields: tuple[str, ...] | None  # what was asked, to tell a retry from a reused reference
    reversal_only: bool = False  # a reversal for a reference never paid (its tombstone)


@dataclass
class UtilityState:
    key: RSAPrivateKey
    hub_key: RSAPublicKey
    merchant_id: str
    slow_pay_delay: float
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    postings: dict[str, Posting] = field(default_factory=dict)
    window_closed: bool = False  # batch window (日切): pays refused with PAY_SERVICE_WINDOW_CLOSED
    tamper_answers: bool = False  # alter answers after signing (tests: the connector must refuse them)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    serials: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def stamp(self) -> str:
        return self.clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def signed(self, fields: Mapping[str, str]) -> dict[str, str]:
        signed = {**fields, "merchant_id": self.merchant_id, "timestamp": self.stamp(), "sign_type": "RSA2"}
        signed["sign"] = signatures.rsa_sign_params(signed, self.key)
        if self.tamper_answers:
            signed["msg"] = signed.get("msg", "") + " (altered in transit)"
        return signed


UTILITY_STATE = web.AppKey("utility_state", UtilityState)


class Refused(Exception):
    """Answer ``code`` (with ``msg``) instead of going on; ``echo`` fields identify the request."""

    def __init__(self, code: str, msg: str, **echo: str) -> None:
        super().__init__(code)
        self.code, self.msg, self.echo = code, msg, echo


def _answer(state: UtilityState, fields: Mapping[str, str]) -> web.Response:
    return web.Response(body=orjson.dumps(state.signed(fields)), content_type="application/json")


def _authenticate(state: UtilityState, params: Mapping[str, str]) -> None:
    """Signature first (so nothing can be probed unsigned), then merchant and freshness."""
    try:
        if params.get("sign_type") != "RSA2":
            raise signatures.SignatureMalformed("sign_type must be RSA2")
        signatures.rsa_verify_params(params, params.get("sign", ""), state.hub_key)
    except signatures.SignatureError as exc:
        raise Refused("SYS_SIGN_INVALID", f"signature check failed: {exc}") from None
    if params.get("merchant_id") != state.merchant_id:
        raise Refused("SYS_MERCHANT_INVALID", "unknown merchant")
    try:
        sent = datetime.fromisoformat(params.get("timestamp", ""))
    except ValueError:
        raise Refused("SYS_TIMESTAMP_INVALID", "timestamp is not RFC 3339") from None
    if sent.tzinfo is None or abs(state.clock() - sent) > TIMESTAMP_TOLERANCE:
        raise Refused("SYS_TIMESTAMP_INVALID", "timestamp too far from the biller's clock")


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise Refused("SYS_PARAM_INVALID", "send application/x-www-form-urlencoded")
    form = await request.post()
    params: dict[str, str] = {}
    for name, value in form.items():
        if not isinstance(value, str) or name in params:
            raise Refused("SYS_PARAM_INVALID", f"parameter {name} must appear once, as text")
        params[name] = value
    return params


def _biller(params: Mapping[str, str]) -> SandboxBiller:
    biller = BILLERS.get(params.get("biller", ""))
    if biller is None:
        raise Refused("SYS_BILLER_UNKNOWN", "no such biller", biller=params.get("biller", ""))
    return biller


Operation = Callable[[UtilityState, dict[str, str]], Awaitable[dict[str, str]]]


def operation(handler: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Parse, authenticate, run ``handler``; a :class:`Refused` becomes a signed error answer."""

    async def handle(request: web.Request) -> web.Response:
        state = request.app[UTILITY_STATE]
        params: dict[str, str] = {}
        try:
            params = await _form(request)
            _authenticate(state, params)
            fields = await handler(state, params)
        except Refused as refusal:
            echo: dict[str, str] = {
                k: params[k] for k in ("biller", "account_number", "reference") if k in params
            }
            fields = {**echo, **refusal.echo, "code": refusal.code, "msg": refusal.msg}
        return _answer(state, fields)

    return handle


# ---- operations ---------------------------------------------------------------------------------


async def query(state: UtilityState, params: dict[str, str]) -> dict[str, str]:
    biller = _biller(params)
    account = params.get("account_number", "")
    if not _ACCOUNT.fullmatch(account):
        raise Refused("QUERY_ACCOUNT_INVALID", "account_number must be 10 digits")
    if account.endswith("0000"):
        raise Refused("QUERY_NO_DUES", "no bill is due on this account")
    bill = open_bill(biller, account, settlement_day(biller.code, state.clock()))
    return {
        "code": "SUCCESS",
        "msg": "ok",
        "biller": biller.code,
        "account_number": account,
        "bill_ref": bill.bill_ref,
        "amount_due": str(bill.amount_due),
        "currency": biller.currency,
        "due_date": bill.due_date.isoformat(),
        "customer_name": bill.customer_name,
    }


def _posting_fields(posting: Posting, code: str = "SUCCESS", msg: str = "ok") -> dict[str, str]:
    return {
        "code": code,
        "msg": msg,
        "biller": posting.biller,
        "reference": posting.reference,
        "status": posting.status,
        "serial": posting.serial,
        "amount": str(posting.amount),
        "settle_date": posting.day.isoformat(),
    }


def _replay(posting: Posting, fields: tuple[str, ...]) -> dict[str, str]:
    if posting.reversal_only:  # reversed before it arrived: never posted
        return _posting_fields(posting, msg="reversed before it was received")
    if posting.fields != fields:
        raise Refused("PAY_DUPLICATE", "reference already used for another payment")
    if posting.status == "FAILED":
        return _posting_fields(posting, "PAY_REJECTED", "payment rejected by the biller")
    return _posting_fields(posting, msg="already paid")


def _check_amount(biller: SandboxBiller, amount: int, due: int | None) -> None:
    rule = biller.exactness
    allowed = amount >= biller.min_amount and (
        due is None
        or rule == "any"
        or (rule == "exact" and amount == due)
        or (rule == "exact_or_above" and amount >= due)
        or (rule == "exact_or_below" and amount <= due)
    )
    if not allowed:
        raise Refused("PAY_AMOUNT_NOT_ALLOWED", f"amount not allowed ({rule}, due {due})")


async def pay(state: UtilityState, params: dict[str, str]) -> dict[str, str]:
    biller = _biller(params)
    account, reference = params.get("account_number", ""), params.get("reference", "")
    amount_text, currency = params.get("amount", ""), params.get("currency", "")
    if not _REFERENCE.fullmatch(reference) or not _AMOUNT.fullmatch(amount_text):
        raise Refused("SYS_PARAM_INVALID", "reference and a positive integer amount are required")
    if not _ACCOUNT.fullmatch(account):
        raise Refused("PAY_ACCOUNT_INVALID", "account_number must be 10 digits")
    asked = (biller.code, account, amount_text, currency, params.get("bill_ref", ""))
    known = state.postings.get(reference)
    if known is not None:
        return _replay(known, asked)
    if currency != biller.currency:
        raise Refused("PAY_CURRENCY_MISMATCH", f"this biller is paid in {biller.currency}")
    if state.window_closed:
        raise Refused("PAY_SERVICE_WINDOW_CLOSED", "batch window: try again later")
    if account.endswith("0000"):
        raise Refused("PAY_NO_DUES", "no bill is due on this account")
    now = state.clock()
    today = settlement_day(biller.code, now)
    bill = open_bill(biller, account, today)
    given_ref = params.get("bill_ref")
    # The previous month's reference is still good: a bill fetched just before midnight on the 30th.
    last_month = today.replace(day=1) - timedelta(days=1)
    if given_ref and given_ref not in (bill.bill_ref, bill_ref(biller, account, last_month)):
        raise Refused("PAY_BILL_MISMATCH", "bill_ref is not this account's open bill")
    if not given_ref and biller.bill_required:
        raise Refused("PAY_BILL_REQUIRED", "fetch the bill first and send its bill_ref")
    amount = int(amount_text)
    _check_amount(biller, amount, bill.amount_due if given_ref else None)
    status = "FAILED" if account.endswith("9999") else "SUCCESS"
    serial = f"{biller.code[:2]}{today:%Y%m%d}{next(state.serials):08d}"
    posting = Posting(reference, biller.code, account, amount, status, serial, today, asked)
    state.postings[reference] = posting
    if status == "FAILED":
        return _posting_fields(posting, "PAY_REJECTED", "payment rejected by the biller")
    if account.endswith("7777"):
        # Posted, but the answer comes after the connector has given up (until shutdown).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), state.slow_pay_delay)
    return _posting_fields(posting)


async def status(state: UtilityState, params: dict[str, str]) -> dict[str, str]:
    biller = _biller(params)
    reference = params.get("reference", "")
    posting = state.postings.get(reference)
    if posting is None or posting.biller != biller.code:
        raise Refused("STATUS_NOT_FOUND", "no payment with this reference")
    return _posting_fields(posting)


async def reverse(state: UtilityState, params: dict[str, str]) -> dict[str, str]:
    biller = _biller(params)
    reference = params.get("reference", "")
    if not _REFERENCE.fullmatch(reference):
        raise Refused("SYS_PARAM_INVALID", "reference is required")
    today = settlement_day(biller.code, state.clock())
    posting = state.postings.get(reference)
    if posting is None:
        posting = Posting(reference, biller.code, "", 0, "REVERSED", "", today, None, reversal_only=True)
        state.postings[reference] = posting
        return _posting_fields(posting, msg="reversal recorded; the payment will not be posted")
    if posting.biller != biller.code:
        raise Refused("SYS_PARAM_INVALID", "reference belongs to another biller")
    if posting.status == "FAILED":
        return _posting_fields(posting, "REVERSE_NOT_ALLOWED", "payment was rejected: nothing to reverse")
    if posting.status == "SUCCESS":
        if posting.day != today:
            return _posting_fields(posting, "REVERSE_NOT_ALLOWED", "settled after the cut-off")
        posting.status = "REVERSED"
    return _posting_fields(posting, msg="reversed")


# ---- reconciliation file ------------------------------------------------------------------------


def recon_file(state: UtilityState, biller: str, day: date) -> str:
    lines = [
        p
        for p in state.postings.values()
        if p.biller == biller and p.day == day and not p.reversal_only and p.status != "FAILED"
    ]
    total = sum(p.amount for p in lines if p.status == "SUCCESS")
    rows = [f"{len(lines)}|{total}"]
    rows += [f"{day.isoformat()}|{p.reference}|{p.account}|{p.amount}|{p.status}" for p in lines]
    return "\n".join(rows) + "\n"


def _recon_request(state: UtilityState, request: web.Request) -> tuple[SandboxBiller, date]:
    params = dict(request.query)
    _authenticate(state, params)
    if (
        params.get("biller") != request.match_info["biller"]
        or params.get("date") != request.match_info["day"]
    ):
        raise Refused("SYS_PARAM_INVALID", "signed biller/date differ from the path")
    biller = _biller(params)
    try:
        day = date.fromisoformat(params["date"])
    except ValueError:
        raise Refused("SYS_PARAM_INVALID", "date must be YYYY-MM-DD") from None
    if day > settlement_day(biller.code, state.clock()):
        raise Refused("RECON_NOT_READY", "the day has not started")
    return biller, day


async def recon(request: web.Request) -> web.Response:
    state = request.app[UTILITY_STATE]
    code, day_text = request.match_info["biller"], request.match_info["day"]
    try:
        biller, day = _recon_request(state, request)
    except Refused as refusal:
        return _answer(state, {"biller": code, "date": day_text, "code": refusal.code, "msg": refusal.msg})
    # Today's file holds the postings so far: the sandbox publishes continuously, not after the cut-off.
    body = recon_file(state, biller.code, day).encode()
    signed = state.signed({"biller": code, "date": day_text, "digest": hashlib.sha256(body).hexdigest()})
    headers = {
        "X-Merchant-Id": signed["merchant_id"],
        "X-Timestamp": signed["timestamp"],
        "X-Sign-Type": signed["sign_type"],
        "X-Sign": signed["sign"],
    }
    if state.tamper_answers:
        body += f"{day_text}|forged|0000000001|1|REVERSED\n".encode()
    return web.Response(body=body, headers=headers, content_type="text/plain", charset="utf-8")


# ---- book ---------------------------------------------------------------------------------------

BOOK_STATUS: Mapping[str, str] = {"SUCCESS": "posted", "FAILED": "rejected", "REVERSED": "reversed"}
HUB_BILLER_IDS: Mapping[str, str] = {spec.wire_code: spec.info.id for spec in HUB_BILLERS}


def book_entry(posting: Posting) -> dict[str, Any]:
    status = BOOK_STATUS.get(posting.status, "pending")
    return {
        "reference": posting.reference,
        "biller": HUB_BILLER_IDS.get(posting.biller, posting.biller),
        "account": posting.account,
        "amount": posting.amount,
        "currency": BILLERS[posting.biller].currency,  # a pay in another currency is refused, never booked
        "status": status,
        "posted": posting.amount if status == "posted" else 0,
    }


def book_view(state: UtilityState) -> Book:
    """The biller's book (``GET /book``): every posting and reversal tombstone, oldest first."""
    return {"postings": [book_entry(posting) for posting in state.postings.values()]}


async def book(request: web.Request) -> web.Response:
    return book_response(book_view(request.app[UTILITY_STATE]))


# ---- app ----------------------------------------------------------------------------------------


def utility_app(settings: Settings) -> web.Application:
    hub, biller = dev_keys(settings.keys_dir)
    config = settings.connectors.get("utility_biller", ConnectorSettings())
    state = UtilityState(
        key=biller,
        hub_key=hub.public_key(),
        merchant_id=config.options.get("merchant_id", DEV_MERCHANT_ID),
        slow_pay_delay=config.read_timeout + SLOW_ANSWER_MARGIN,
    )
    app = simulator_app(forget=state.postings.clear)
    app[UTILITY_STATE] = state

    async def wake_sleepers(app: web.Application) -> None:
        app[UTILITY_STATE].stopping.set()

    app.on_shutdown.append(wake_sleepers)
    app.router.add_post("/api/query", operation(query))
    app.router.add_post("/api/pay", operation(pay))
    app.router.add_post("/api/status", operation(status))
    app.router.add_post("/api/reverse", operation(reverse))
    app.router.add_get("/api/recon/{biller}/{day}", recon)
    app.router.add_get("/book", book)
    return app


async def start(settings: Settings) -> HttpSimulator:
    return await serve_app(utility_app(settings), settings.sandbox.host, settings.sandbox.utility)
