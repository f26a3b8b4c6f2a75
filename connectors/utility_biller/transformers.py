"""Utility biller wire format ↔ core types. Pure: no I/O, no clock (callers pass ``now``/``timestamp``).

Wire format (what ``connectors/sandbox/utility.py`` serves and a real 生活缴费 platform looks like):

* Requests are ``application/x-www-form-urlencoded`` UTF-8 forms; answers are JSON objects whose
  values are all strings. Amounts are integers in minor units (fen, cents) with a ``currency``.
* Both directions carry ``merchant_id``, ``timestamp`` (RFC 3339 UTC), ``sign_type=RSA2`` and
  ``sign``: base64 RSA-SHA256 (PKCS#1 v1.5) over :func:`crypto.signatures.canonical_params`
  (keys sorted, empty values, ``sign`` and ``sign_type`` dropped, ``k=v&…``).
* Every answer has ``code`` (``SUCCESS`` or an error code namespaced by operation: ``QUERY_…``,
  ``PAY_…``, ``STATUS_…``, ``REVERSE_…``, ``RECON_…``; ``SYS_…`` for envelope errors such as a bad
  signature) and ``msg``, and echoes what identifies the request (``reference``, or ``biller`` and
  ``account_number``) so an answer cannot be replayed onto another request.
* The reconciliation file is text: ``count|total`` then one ``date|serial|account|amount|status``
  line per posting of the day, ``serial`` being our reference (the attempt id). ``count`` is the
  number of lines; ``total`` the sum of the ``SUCCESS`` amounts (what the biller settles).

Mapping rules:

* A pay answer that is not understood is *pending* (ask ``status`` later), never a failure.
* Business refusals that moved no money raise the connector errors (``NoDues``, ``AmountNotAllowed``,
  ``InvalidParams``, ``DuplicateReference``, ``ServiceWindowClosed``); a biller rejection of a
  posting is a normal answer: ``BillPosting(FAILED, code="biller_rejected")``.
* A posting's state after ``reverse`` is ``FAILED`` with ``code="reversed"`` (the bill is not paid:
  give the money back) or ``SUCCEEDED`` with ``code="reversal_refused"`` (the posting stands).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import NoReturn

import msgspec
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from connectors.base import (
    REFERENCE_NOT_FOUND,
    AmountNotAllowed,
    Bill,
    BillerInfo,
    BillPayment,
    BillPosting,
    ConnectorError,
    CustomerParam,
    DuplicateReference,
    InvalidParams,
    NoDues,
    Outcome,
    ServiceWindowClosed,
    SettlementLine,
    SignatureError,
)
from crypto import signatures

SIGN_TYPE = "RSA2"
SUCCESS = "SUCCESS"
ACCOUNT_PARAM = "account_number"
ACCOUNT_REGEX = r"^[0-9]{10}$"
MAX_RECON_LINES = 1_000_000  # a day's file bigger than this is not a file we should trust


class MalformedAnswer(ValueError):
    """The biller's answer cannot be read (not JSON, not strings, fields missing, echo mismatch)."""


class MalformedReconFile(ValueError):
    """The reconciliation file does not follow the format; the message names the line."""


# ---- catalog ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BillerSpec:
    """One biller behind this connector: the public catalog entry and the biller's own code."""

    info: BillerInfo
    wire_code: str  # the platform's biller code
    min_amount: int = 1


def _account(description: str) -> tuple[CustomerParam, ...]:
    return (CustomerParam(ACCOUNT_PARAM, ACCOUNT_REGEX, description),)


BILLERS: tuple[BillerSpec, ...] = (
    BillerSpec(
        BillerInfo(
            id="bil_cn_power",
            name="China Power Grid (electricity)",
            category="electricity",
            country="CN",
            timezone="Asia/Shanghai",
            currency="CNY",
            customer_params=_account("10-digit electricity account number (户号)"),
            fetch="required",
            amount_exactness="exact_or_above",
        ),
        wire_code="CN_POWER",
    ),
    BillerSpec(
        BillerInfo(
            id="bil_cn_water",
            name="China City Water (water)",
            category="water",
            country="CN",
            timezone="Asia/Shanghai",
            currency="CNY",
            customer_params=_account("10-digit water account number (户号)"),
            fetch="required",
            amount_exactness="exact_or_above",
        ),
        wire_code="CN_WATER",
    ),
    BillerSpec(
        BillerInfo(
            id="bil_cn_gas",
            name="China City Gas (gas)",
            category="gas",
            country="CN",
            timezone="Asia/Shanghai",
            currency="CNY",
            customer_params=_account("10-digit gas account number (户号)"),
            fetch="required",
            amount_exactness="exact_or_above",
        ),
        wire_code="CN_GAS",
    ),
    BillerSpec(
        BillerInfo(
            id="bil_cn_broadband",
            name="China Broadband (broadband)",
            category="broadband",
            country="CN",
            timezone="Asia/Shanghai",
            currency="CNY",
            customer_params=_account("10-digit broadband account number"),
            fetch="required",
            amount_exactness="exact",
        ),
        wire_code="CN_BROADBAND",
    ),
    BillerSpec(
        BillerInfo(
            id="bil_cn_creditcard",
            name="China Bank Credit Card (repayment)",
            category="credit_card",
            country="CN",
            timezone="Asia/Shanghai",
            currency="CNY",
            customer_params=_account("10-digit card account number"),
            fetch="optional",
            amount_exactness="any",
        ),
        wire_code="CN_CREDITCARD",
        min_amount=1,
    ),
    BillerSpec(
        BillerInfo(
            id="bil_us_power",
            name="US Power & Light (electricity)",
            category="electricity",
            country="US",
            timezone="Etc/GMT+5",  # the sandbox biller keeps UTC-5 all year
            currency="USD",
            customer_params=_account("10-digit electricity account number"),
            fetch="required",
            amount_exactness="exact_or_above",
        ),
        wire_code="US_POWER",
    ),
)
BILLERS_BY_ID: Mapping[str, BillerSpec] = {spec.info.id: spec for spec in BILLERS}


def spec_for(biller: str) -> BillerSpec:
    spec = BILLERS_BY_ID.get(biller)
    if spec is None:
        raise InvalidParams(f"utility_biller does not serve biller '{biller}'")
    return spec


def account_of(spec: BillerSpec, customer_params: Mapping[str, str]) -> str:
    """The account number, checked against the catalog regex before it is signed or sent."""
    account = customer_params.get(ACCOUNT_PARAM)
    if account is None or not re.fullmatch(ACCOUNT_REGEX, account):
        raise InvalidParams(f"{spec.info.id}: customer_params.{ACCOUNT_PARAM} must be 10 digits")
    return account


def mask_name(name: str) -> str:
    """Keep each word's first character: "Li Lei" → "L* L*", "韩梅梅" → "韩*"."""
    return " ".join(word[0] + "*" for word in name.split())


# ---- envelope -----------------------------------------------------------------------------------


def wire_timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_params(
    params: Mapping[str, str], key: RSAPrivateKey, *, merchant_id: str, timestamp: str
) -> dict[str, str]:
    """``params`` plus the envelope fields and ``sign``; what goes on the wire."""
    signed = {**params, "merchant_id": merchant_id, "timestamp": timestamp, "sign_type": SIGN_TYPE}
    signed["sign"] = signatures.rsa_sign_params(signed, key)
    return signed


def verify_params(params: Mapping[str, str], key: RSAPublicKey) -> None:
    """Raise :class:`connectors.base.SignatureError` unless ``params`` carry a valid RSA2 signature."""
    if params.get("sign_type") != SIGN_TYPE:
        raise SignatureError(f"sign_type must be {SIGN_TYPE}")
    sign = params.get("sign")
    if not sign:
        raise SignatureError("answer is not signed")
    try:
        signatures.rsa_verify_params(params, sign, key)
    except signatures.SignatureError as exc:
        raise SignatureError(f"biller signature invalid: {exc}") from None


_ANSWER = msgspec.json.Decoder(dict[str, str])


def open_answer(body: bytes, key: RSAPublicKey, *, merchant_id: str) -> dict[str, str]:
    """Decode a JSON answer and verify its signature (before anything in it is believed)."""
    try:
        answer = _ANSWER.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedAnswer(f"answer is not a JSON object of strings: {exc}") from None
    verify_params(answer, key)
    if answer.get("merchant_id") != merchant_id:
        raise MalformedAnswer("answer is for another merchant")
    if "code" not in answer:
        raise MalformedAnswer("answer has no code")
    return answer


def _expect_echo(answer: Mapping[str, str], **expected: str) -> None:
    for name, value in expected.items():
        if answer.get(name) != value:
            raise MalformedAnswer(f"answer {name}={answer.get(name)!r} does not match the request")


# Codes any operation may answer: the envelope was refused before the operation ran.
_ENVELOPE_ERRORS: Mapping[str, type[ConnectorError]] = {
    "SYS_SIGN_INVALID": SignatureError,  # our signature: wrong key, or the request was altered
    "SYS_TIMESTAMP_INVALID": SignatureError,  # our clock is off by more than the biller accepts
    # The biller does not know us: an authentication failure on our side, not the customer's input.
    "SYS_MERCHANT_INVALID": SignatureError,
    "SYS_PARAM_INVALID": InvalidParams,
    "SYS_BILLER_UNKNOWN": InvalidParams,
}


def _raise_envelope_error(answer: Mapping[str, str]) -> None:
    error = _ENVELOPE_ERRORS.get(answer["code"])
    if error is not None:
        raise error(f"biller refused the request: {answer['code']}: {answer.get('msg', '')}")


# ---- query (查询) ---------------------------------------------------------------------------------

_QUERY_ERRORS: Mapping[str, type[ConnectorError]] = {
    "QUERY_NO_DUES": NoDues,
    "QUERY_ACCOUNT_INVALID": InvalidParams,
}


def query_params(spec: BillerSpec, account: str) -> dict[str, str]:
    return {"biller": spec.wire_code, ACCOUNT_PARAM: account}


def bills_from_query(answer: Mapping[str, str], spec: BillerSpec, account: str) -> list[Bill]:
    _expect_echo(answer, biller=spec.wire_code, account_number=account)
    _raise_envelope_error(answer)
    code = answer["code"]
    error = _QUERY_ERRORS.get(code)
    if error is not None:
        raise error(f"{spec.info.id}: {code}: {answer.get('msg', '')}")
    if code != SUCCESS:
        raise MalformedAnswer(f"{spec.info.id}: unexpected query code {code}")
    try:
        amount = int(answer["amount_due"])
        due = date.fromisoformat(answer["due_date"])
        bill = Bill(
            bill_ref=answer["bill_ref"],
            amount_due=amount,
            currency=answer["currency"],
            due_date=due,
            customer_name=mask_name(answer.get("customer_name", "")),
        )
    except (KeyError, ValueError) as exc:
        raise MalformedAnswer(f"query answer incomplete: {exc}") from None
    if amount <= 0 or bill.currency != spec.info.currency or not bill.bill_ref:
        raise MalformedAnswer("query answer has a non-positive amount, another currency or no bill_ref")
    return [bill]


# ---- pay (缴费), status, reversal (冲正) ----------------------------------------------------------

# Wire status of a posting → outcome. Anything else is pending: ask again, never assume failure.
STATUS_MAP: Mapping[str, tuple[Outcome, str | None]] = {
    "SUCCESS": (Outcome.SUCCEEDED, None),
    "FAILED": (Outcome.FAILED, "biller_rejected"),
    "REVERSED": (Outcome.FAILED, "reversed"),
    "PROCESSING": (Outcome.PENDING, None),
}


def posting_for_status(
    wire_status: str | None, *, biller_reference: str | None = None, message: str | None = None
) -> BillPosting:
    outcome, code = STATUS_MAP.get(wire_status or "", (Outcome.PENDING, None))
    if outcome is Outcome.PENDING and wire_status not in STATUS_MAP:
        code = f"unknown_status:{wire_status}" if wire_status else None
    return BillPosting(outcome, biller_reference or None, code, message or None)


_PAY_ERRORS: Mapping[str, type[ConnectorError]] = {
    "PAY_NO_DUES": NoDues,
    "PAY_AMOUNT_NOT_ALLOWED": AmountNotAllowed,
    "PAY_DUPLICATE": DuplicateReference,
    "PAY_SERVICE_WINDOW_CLOSED": ServiceWindowClosed,
    "PAY_ACCOUNT_INVALID": InvalidParams,
    "PAY_BILL_MISMATCH": InvalidParams,
    "PAY_BILL_REQUIRED": InvalidParams,
    "PAY_CURRENCY_MISMATCH": InvalidParams,
}


def pay_params(spec: BillerSpec, payment: BillPayment) -> dict[str, str]:
    account = account_of(spec, payment.customer_params)
    if payment.currency != spec.info.currency:
        raise InvalidParams(f"{spec.info.id} is paid in {spec.info.currency}, not {payment.currency}")
    if payment.amount < spec.min_amount:
        raise AmountNotAllowed(f"{spec.info.id}: the amount must be at least {spec.min_amount}")
    params = {
        "biller": spec.wire_code,
        ACCOUNT_PARAM: account,
        "reference": payment.attempt_id,
        "amount": str(payment.amount),
        "currency": payment.currency,
    }
    if payment.bill_ref:
        params["bill_ref"] = payment.bill_ref
    return params


def posting_from_pay(answer: Mapping[str, str], reference: str) -> BillPosting:
    _expect_echo(answer, reference=reference)
    _raise_envelope_error(answer)
    code = answer["code"]
    message = answer.get("msg")
    if code == SUCCESS:
        return posting_for_status(
            answer.get("status"), biller_reference=answer.get("serial"), message=message
        )
    if code == "PAY_REJECTED":  # the biller looked at the posting and said no: a decline
        return BillPosting(Outcome.FAILED, answer.get("serial") or None, "biller_rejected", message)
    error = _PAY_ERRORS.get(code)
    if error is not None:
        raise error(f"{code}: {message or ''}")
    # SYS_BUSY, a code added after we were written …: nobody told us no money moved.
    return BillPosting(Outcome.PENDING, None, f"unknown_code:{code}", message)


def reference_params(spec: BillerSpec, reference: str) -> dict[str, str]:
    return {"biller": spec.wire_code, "reference": reference}


def posting_from_status(answer: Mapping[str, str], reference: str) -> BillPosting:
    _expect_echo(answer, reference=reference)
    _raise_envelope_error(answer)
    code = answer["code"]
    if code == SUCCESS:
        return posting_for_status(
            answer.get("status"), biller_reference=answer.get("serial"), message=answer.get("msg")
        )
    if code == "STATUS_NOT_FOUND":
        # Not (yet) received: a pay still in flight may land later. Pending until a reversal
        # (which the biller records even for unknown references) makes it definite.
        return BillPosting(Outcome.PENDING, None, REFERENCE_NOT_FOUND, answer.get("msg"))
    return BillPosting(Outcome.PENDING, None, f"unknown_code:{code}", answer.get("msg"))


def posting_from_reverse(answer: Mapping[str, str], reference: str) -> BillPosting:
    _expect_echo(answer, reference=reference)
    _raise_envelope_error(answer)
    code = answer["code"]
    serial = answer.get("serial")
    if code == SUCCESS:
        return posting_for_status(answer.get("status"), biller_reference=serial, message=answer.get("msg"))
    if code == "REVERSE_NOT_ALLOWED":
        # The biller keeps the posting as it is (typically: settled after the day's cut-off).
        posting = posting_for_status(answer.get("status"), biller_reference=serial, message=answer.get("msg"))
        if posting.outcome is not Outcome.SUCCEEDED:
            return posting
        return BillPosting(Outcome.SUCCEEDED, posting.biller_reference, "reversal_refused", posting.message)
    return BillPosting(Outcome.PENDING, None, f"unknown_code:{code}", answer.get("msg"))


# ---- reconciliation file --------------------------------------------------------------------------

RECON_STATUSES = frozenset({"SUCCESS", "REVERSED"})
_SERIAL = re.compile(r"[A-Za-z0-9_-]{1,64}")
_INTEGER = re.compile(r"0|[1-9][0-9]{0,17}")


def recon_params(spec: BillerSpec, day: date) -> dict[str, str]:
    return {"biller": spec.wire_code, "date": day.isoformat()}


def recon_signed_fields(spec_code: str, day: date, digest: str) -> dict[str, str]:
    """What the biller signs for a file (sent as headers): the file's SHA-256 and what it is for."""
    return {"biller": spec_code, "date": day.isoformat(), "digest": digest}


def refuse_recon(answer: Mapping[str, str]) -> NoReturn:
    """A signed JSON answer instead of the file: the biller refused (e.g. ``RECON_NOT_READY``)."""
    _raise_envelope_error(answer)
    raise MalformedAnswer(f"biller sent no file: {answer['code']}: {answer.get('msg', '')}")


def parse_recon_file(text: str, day: date) -> list[SettlementLine]:
    """Strict: a file that does not add up is refused whole, naming the first bad line.

    Silently skipping a line would turn a biller-side posting into a "missing at the biller"
    difference, the most expensive kind to chase.
    """
    lines = text.splitlines()
    if not lines:
        raise MalformedReconFile("line 1: empty file, expected the count|total header")
    header = lines[0].split("|")
    if len(header) != 2 or not all(_INTEGER.fullmatch(part) for part in header):
        raise MalformedReconFile(f"line 1: expected 'count|total', got {lines[0][:80]!r}")
    count, total = int(header[0]), int(header[1])
    details = lines[1:]
    while details and not details[-1].strip():  # a trailing newline is not a line
        details.pop()
    if len(details) > MAX_RECON_LINES:
        raise MalformedReconFile(f"file has more than {MAX_RECON_LINES} lines")
    parsed: list[SettlementLine] = []
    seen: set[str] = set()
    for number, raw in enumerate(details, start=2):
        parsed.append(_parse_recon_line(raw, number, day, seen))
    if len(parsed) != count:
        raise MalformedReconFile(f"line 1: header counts {count} lines, the file has {len(parsed)}")
    settled = sum(line.amount for line in parsed if line.status == "SUCCESS")
    if settled != total:
        raise MalformedReconFile(f"line 1: header total {total} != sum of SUCCESS lines {settled}")
    return parsed


def _parse_recon_line(raw: str, number: int, day: date, seen: set[str]) -> SettlementLine:
    fields = raw.split("|")
    if len(fields) != 5:
        raise MalformedReconFile(f"line {number}: expected 5 '|'-separated fields, got {len(fields)}")
    day_text, serial, account, amount, status = fields
    try:
        line_day = date.fromisoformat(day_text)
    except ValueError:
        raise MalformedReconFile(f"line {number}: bad date {day_text[:20]!r}") from None
    if line_day != day:
        raise MalformedReconFile(f"line {number}: date {line_day} in the file for {day}")
    if not _SERIAL.fullmatch(serial):
        raise MalformedReconFile(f"line {number}: bad serial {serial[:80]!r}")
    if serial in seen:
        raise MalformedReconFile(f"line {number}: serial {serial} listed twice")
    seen.add(serial)
    if not re.fullmatch(r"[0-9]{10}", account):
        raise MalformedReconFile(f"line {number}: bad account {account[:20]!r}")
    if not _INTEGER.fullmatch(amount) or int(amount) <= 0:
        raise MalformedReconFile(f"line {number}: amount must be a positive integer in minor units")
    if status not in RECON_STATUSES:
        raise MalformedReconFile(f"line {number}: unknown status {status[:20]!r}")
    return SettlementLine(day=line_day, serial=serial, account=account, amount=int(amount), status=status)


def render_recon_file(lines: list[SettlementLine]) -> str:
    """The file for ``lines`` (the sandbox writes it; tests build files with it)."""
    total = sum(line.amount for line in lines if line.status == "SUCCESS")
    body = [f"{len(lines)}|{total}"]
    body += [
        f"{line.day.isoformat()}|{line.serial}|{line.account}|{line.amount}|{line.status}" for line in lines
    ]
    return "\n".join(body) + "\n"
