"""Telecom top-up wire format ↔ core types. Pure: no I/O, no clock.

Wire format (served by ``connectors/sandbox/telecom.py``; a top-up aggregator's REST API):

* ``GET /operators/lookup?msisdn=<E.164>`` → ``{msisdn, operator, operator_name, country, currency,
  denominations}``, where ``denominations`` is ``{"type": "fixed", "values": [...]}`` or
  ``{"type": "range", "min": m, "max": M, "step": s}`` (minor units); 404 ``operator_not_found``.
* ``POST /topups`` ``{reference, msisdn, amount, currency}`` → 201 (200 when the reference was seen
  before with the same fields) ``{reference, msisdn, amount, currency, operator, status,
  operator_reference}``; ``status`` ∈ CREATED → SUBMITTED → COMPLETED, or REJECTED.
* ``GET /topups/{reference}`` → the same object; 404 ``not_found``.
* ``GET /reports/{YYYY-MM-DD}`` → ``{date, count, total, items: [{reference, msisdn, amount, currency,
  status}]}``: the day's top-ups (``total`` = sum of COMPLETED amounts).
* Errors are ``{"error": code, "message": …}`` with a 4xx status: ``signature_invalid`` (401),
  ``invalid_request``, ``invalid_msisdn``, ``currency_not_supported``, ``amount_not_allowed`` (400),
  ``operator_not_found``, ``not_found`` (404), ``duplicate_reference`` (409).
* Signature: ``X-Signature`` = lowercase hex HMAC-SHA256 under the shared secret
  (``[connectors.telecom_topup] secret``) of the raw body, both ways. A GET has no body, so its
  request signature covers the request target (``/path?query`` exactly as sent) instead.
  Replays are harmless: a top-up is idempotent on its reference.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import msgspec
import phonenumbers

from connectors.base import (
    AmountNotAllowed,
    BillerInfo,
    BillPosting,
    ConnectorError,
    CustomerParam,
    DuplicateReference,
    InvalidParams,
    Outcome,
    SettlementLine,
    SignatureError,
)
from crypto.signatures import hmac_sha256_hex

MSISDN_PARAM = "msisdn"
MSISDN_REGEX = r"^\+[1-9][0-9]{6,14}$"
SIGNATURE_HEADER = "X-Signature"

BILLER = BillerInfo(
    id="bil_cn_mobile",
    name="China mobile top-up (China Mobile, China Unicom, China Telecom)",
    category="telecom_prepaid",
    country="CN",
    timezone="Asia/Shanghai",
    currency="CNY",
    customer_params=(
        CustomerParam(MSISDN_PARAM, MSISDN_REGEX, "Mobile number in E.164 form: +8613800138000"),
    ),
    fetch="none",
    amount_exactness="exact",
    denominations=(1000, 3000, 5000, 10000),
    supports_reversal=False,  # a delivered top-up cannot be taken back from the handset
)
BILLERS: Mapping[str, BillerInfo] = {BILLER.id: BILLER}


class MalformedAnswer(ValueError):
    """An answer that cannot be read: not JSON, wrong shape, or about another reference."""


def biller_for(biller: str) -> BillerInfo:
    info = BILLERS.get(biller)
    if info is None:
        raise InvalidParams(f"telecom_topup does not serve biller '{biller}'")
    return info


# ---- phone numbers ------------------------------------------------------------------------------

_MOBILE_TYPES = frozenset(
    {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}
)


def normalise_msisdn(raw: str, *, country: str) -> str:
    """The E.164 form of a mobile number of ``country``; InvalidParams saying what is wrong otherwise.

    The number itself is never put in the message: error messages end up in logs.
    """
    try:
        number = phonenumbers.parse(raw, None)  # no default region: the +country code is required
    except phonenumbers.NumberParseException as exc:
        raise InvalidParams(
            f"msisdn is not an international phone number (+<country code><number>): {exc}"
        ) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidParams("msisdn is not a valid phone number (wrong length or unassigned prefix)")
    region = phonenumbers.region_code_for_number(number)
    if region != country:
        raise InvalidParams(f"msisdn must be a {country} number (this one is from {region or 'nowhere'})")
    if phonenumbers.number_type(number) not in _MOBILE_TYPES:
        raise InvalidParams("msisdn must be a mobile number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def msisdn_of(info: BillerInfo, customer_params: Mapping[str, str]) -> str:
    raw = customer_params.get(MSISDN_PARAM)
    if raw is None:
        raise InvalidParams(f"{info.id}: customer_params.{MSISDN_PARAM} is required")
    return normalise_msisdn(raw, country=info.country)


# ---- denominations ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denominations:
    """What an operator accepts: a fixed list, or a range with a step (both in minor units)."""

    fixed: tuple[int, ...] = ()
    minimum: int = 0
    maximum: int = 0
    step: int = 1

    def allows(self, amount: int) -> bool:
        if self.fixed:
            return amount in self.fixed
        return self.minimum <= amount <= self.maximum and (amount - self.minimum) % self.step == 0

    def describe(self) -> str:
        if self.fixed:
            return "one of " + ", ".join(str(v) for v in self.fixed)
        return f"between {self.minimum} and {self.maximum} in steps of {self.step}"


@dataclass(frozen=True, slots=True)
class Operator:
    code: str
    name: str
    msisdn: str
    denominations: Denominations


def check_amount(allowed: Denominations, amount: int, currency: str) -> None:
    if not allowed.allows(amount):
        raise AmountNotAllowed(f"top-up amount {amount} {currency} not offered: {allowed.describe()}")


class _FixedWire(msgspec.Struct, tag_field="type", tag="fixed"):
    values: list[int]


class _RangeWire(msgspec.Struct, tag_field="type", tag="range"):
    min: int
    max: int
    step: int = 1


class _OperatorWire(msgspec.Struct):
    msisdn: str
    operator: str
    operator_name: str
    denominations: _FixedWire | _RangeWire


def denominations_from_wire(wire: _FixedWire | _RangeWire) -> Denominations:
    if isinstance(wire, _FixedWire):
        if not wire.values or any(v <= 0 for v in wire.values):
            raise MalformedAnswer("fixed denominations must be positive")
        return Denominations(fixed=tuple(sorted(set(wire.values))))
    if not 0 < wire.min <= wire.max or wire.step <= 0:
        raise MalformedAnswer("denomination range must have 0 < min <= max and step > 0")
    return Denominations(minimum=wire.min, maximum=wire.max, step=wire.step)


def operator_from_lookup(body: bytes, msisdn: str) -> Operator:
    try:
        wire = msgspec.json.decode(body, type=_OperatorWire)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedAnswer(f"operator lookup answer: {exc}") from None
    if wire.msisdn != msisdn:
        raise MalformedAnswer("operator lookup answer is about another number")
    return Operator(
        wire.operator, wire.operator_name, wire.msisdn, denominations_from_wire(wire.denominations)
    )


# ---- signatures ---------------------------------------------------------------------------------


def sign(secret: bytes, message: bytes) -> str:
    return hmac_sha256_hex(secret, message)


def verify(secret: bytes, message: bytes, signature: str | None) -> None:
    if not signature:
        raise SignatureError("answer has no X-Signature")
    # Bytes, so that a non-ASCII header is a mismatch rather than a TypeError.
    if not hmac.compare_digest(sign(secret, message).encode(), signature.strip().encode()):
        raise SignatureError("X-Signature does not match the body")


# ---- top-ups ------------------------------------------------------------------------------------

# Wire status → outcome. Anything not listed is pending: ask again, never assume failure.
STATUS_MAP: Mapping[str, tuple[Outcome, str | None]] = {
    "CREATED": (Outcome.PENDING, None),
    "CONFIRMED": (Outcome.PENDING, None),
    "SUBMITTED": (Outcome.PENDING, None),
    "COMPLETED": (Outcome.SUCCEEDED, None),
    "REJECTED": (Outcome.FAILED, "biller_rejected"),
    "DECLINED": (Outcome.FAILED, "biller_rejected"),
    "CANCELLED": (Outcome.FAILED, "canceled"),
    "REVERSED": (Outcome.FAILED, "reversed"),
}


def posting_for_status(wire_status: str, operator_reference: str | None = None) -> BillPosting:
    known = STATUS_MAP.get(wire_status)
    if known is None:
        return BillPosting(Outcome.PENDING, operator_reference, f"unknown_status:{wire_status}")
    outcome, code = known
    return BillPosting(outcome, operator_reference, code)


def topup_body(reference: str, msisdn: str, amount: int, currency: str) -> bytes:
    return msgspec.json.encode(
        {"reference": reference, "msisdn": msisdn, "amount": amount, "currency": currency}
    )


class _TopupWire(msgspec.Struct):
    reference: str
    status: str
    operator_reference: str | None = None


class _ErrorWire(msgspec.Struct):
    error: str
    message: str = ""


def posting_from_topup(body: bytes, reference: str) -> BillPosting:
    try:
        wire = msgspec.json.decode(body, type=_TopupWire)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedAnswer(f"top-up answer: {exc}") from None
    if wire.reference != reference:
        raise MalformedAnswer("top-up answer is about another reference")
    return posting_for_status(wire.status, wire.operator_reference)


# Refusals that say nothing was created (a 4xx with one of these codes).
_TOPUP_ERRORS: Mapping[str, type[ConnectorError]] = {
    "amount_not_allowed": AmountNotAllowed,
    "invalid_msisdn": InvalidParams,
    "operator_not_found": InvalidParams,
    "currency_not_supported": InvalidParams,
    "invalid_request": InvalidParams,
    "duplicate_reference": DuplicateReference,
    "signature_invalid": SignatureError,
}


def error_code(body: bytes) -> tuple[str, str]:
    try:
        wire = msgspec.json.decode(body, type=_ErrorWire)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedAnswer(f"error answer: {exc}") from None
    return wire.error, wire.message


def topup_refusal(code: str, message: str) -> ConnectorError | None:
    """The connector error for a refused top-up, or None when the code is not known to be a refusal."""
    error = _TOPUP_ERRORS.get(code)
    if error is None:
        return None
    if code == "operator_not_found":
        return InvalidParams("msisdn has no mobile operator (number not in service)")
    return error(f"{code}: {message}")


# ---- settlement report --------------------------------------------------------------------------


class _ReportItem(msgspec.Struct):
    reference: str
    msisdn: str
    amount: int
    currency: str
    status: str


class _Report(msgspec.Struct):
    date: str
    count: int
    total: int
    items: list[_ReportItem]


def settlement_from_report(body: bytes, day: date) -> list[SettlementLine]:
    try:
        report = msgspec.json.decode(body, type=_Report)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise MalformedAnswer(f"report: {exc}") from None
    if report.date != day.isoformat():
        raise MalformedAnswer(f"report for {report.date}, asked for {day}")
    if report.count != len(report.items):
        raise MalformedAnswer(f"report counts {report.count} items, holds {len(report.items)}")
    completed = sum(item.amount for item in report.items if item.status == "COMPLETED")
    if completed != report.total:
        raise MalformedAnswer(f"report total {report.total} != sum of COMPLETED items {completed}")
    return [
        SettlementLine(day, item.reference, item.msisdn, item.amount, item.status) for item in report.items
    ]
