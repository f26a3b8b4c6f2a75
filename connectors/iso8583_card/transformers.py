"""ISO 8583 wire format of the card acquirer link: pure message building and reading, no I/O.

Messages are ASCII ISO 8583 (hex bitmaps) as spoken by the sandbox acquirer, framed on TCP by a
2-byte big-endian length prefix. Fields used:

    2 PAN (LLVAR)            3 processing code          4 amount, 12 digits of minor units
    7 transmission MMDDhhmmss  11 STAN                  12/13 local time hhmmss / date MMDD
    14 expiry YYMM           37 RRN (12 chars)          38 approval code        39 response code
    41 terminal id           42 merchant id (tenant)    48 private: "INQ" inquiry flag / inquiry state
    49 currency, ISO 4217 numeric                       70 network code (001 sign-on, 301 echo)
    90 original data elements: MTI(4) STAN(6) transmission(10) RRN(12)
    126 private: CVV2, only in authorization requests (0100/0200 purchase)

The RRN of every message is derived from the attempt id of the operation that sends it, so a
retry, a repeat or an inquiry of the same attempt carries the same RRN and the acquirer answers
it from its book instead of charging again. A message that refers to an earlier transaction
(capture advice, reversal, refund) names it in field 90.

Unknown response codes are never guessed: they map to ``Outcome.PENDING`` with the raw code kept.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import iso8583
from iso8583.specs import default_ascii

from connectors.base import CardData, ConnectorResult, InvalidParams, Outcome, PaymentRequest
from connectors.iso8583_card.codec import FixedFieldCodec

Message = dict[str, str]

# ---- spec and framing ------------------------------------------------------------------------


def _field(max_len: int, desc: str, *, len_type: int = 0) -> dict[str, Any]:
    return {"data_enc": "ascii", "len_enc": "ascii", "len_type": len_type, "max_len": max_len, "desc": desc}


ORIGINAL_DATA_LEN: Final = 32  # MTI 4 + STAN 6 + transmission date-time 10 + RRN 12

SPEC: Final[dict[str, dict[str, Any]]] = {
    **{key: dict(value) for key, value in default_ascii.items()},
    "90": _field(ORIGINAL_DATA_LEN, "Original Data Elements (MTI, STAN, transmission, RRN)"),
    "126": _field(4, "Private: CVV2", len_type=2),
}

LENGTH_PREFIX: Final = struct.Struct(">H")
MAX_MESSAGE: Final = 0xFFFF


class WireError(ValueError):
    """A message that cannot be framed, encoded or decoded."""


# The fields this link uses (module docstring): packed and unpacked by a codec compiled from SPEC at
# import; any other message goes through pyiso8583, the reference the codec is tested against.
CODEC_FIELDS: Final = frozenset({2, 3, 4, 7, 11, 12, 13, 14, 37, 38, 39, 41, 42, 48, 49, 70, 90, 126})
CODEC: Final = FixedFieldCodec(SPEC, CODEC_FIELDS)


def pack(message: Message) -> bytes:
    """Encode a message and frame it with its 2-byte big-endian length.

    Like pyiso8583, sets ``message["p"]`` (and ``"1"``) to the bitmaps it wrote."""
    raw: bytes | bytearray | None = CODEC.encode(message)
    if raw is None:
        raw = pack_reference(message)
    if len(raw) > MAX_MESSAGE:
        raise WireError("message too long for a 2-byte length prefix")
    return LENGTH_PREFIX.pack(len(raw)) + raw


def unpack(payload: bytes) -> Message:
    """Decode one message (without its length prefix)."""
    decoded = CODEC.decode(payload)
    return decoded if decoded is not None else unpack_reference(payload)


def pack_reference(message: Message) -> bytearray:
    """pyiso8583's encoding (no length prefix): for messages outside CODEC_FIELDS, and the tests."""
    try:
        raw, _ = iso8583.encode(message, SPEC)
    except iso8583.EncodeError as exc:
        raise WireError(f"cannot encode {message.get('t')}: {exc.msg}, field {exc.field}") from exc
    return raw


def unpack_reference(payload: bytes) -> Message:
    """pyiso8583's decoding: for messages outside CODEC_FIELDS or malformed ones, and the tests."""
    try:
        decoded, _ = iso8583.decode(payload, SPEC)
    except iso8583.DecodeError as exc:
        raise WireError(f"cannot decode message: {exc.msg}, field {exc.field}") from exc
    return dict(decoded)


def frame_length(prefix: bytes) -> int:
    (length,) = LENGTH_PREFIX.unpack(prefix)
    return int(length)


# ---- identifiers, currencies, amounts --------------------------------------------------------

_BASE36: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
RRN_LENGTH: Final = 12


_BASE36_PAIRS: Final = tuple(high + low for high in _BASE36 for low in _BASE36)  # 00 .. ZZ


def _base36(value: int, width: int) -> str:
    """The last ``width`` base-36 digits of ``value`` (two per step)."""
    pieces = []
    for _ in range(width >> 1):
        value, pair = divmod(value, 1296)
        pieces.append(_BASE36_PAIRS[pair])
    if width & 1:
        pieces.append(_BASE36[value % 36])
    return "".join(reversed(pieces))


def rrn_for(attempt_id: str) -> str:
    """The retrieval reference number of an attempt: 12 base-36 characters of its SHA-256.

    Deterministic, so the connector (stateless across restarts) can rebuild it from the attempt id
    for a repeat or an inquiry; 36**12 ≈ 4.7e18 values make collisions negligible.
    """
    digest = int.from_bytes(hashlib.sha256(attempt_id.encode()).digest()[:10], "big")
    return _base36(digest, RRN_LENGTH)


@functools.lru_cache(maxsize=1024)  # a few tenants: computed once each, not per message
def merchant_id(tenant: str) -> str:
    """Field 42 is 15 characters: the tenant id, or a stable abbreviation of a longer one."""
    if len(tenant) <= 15:
        return tenant.ljust(15)
    digest = int.from_bytes(hashlib.sha256(tenant.encode()).digest()[:8], "big")
    return f"{tenant[:7]}~{_base36(digest, 7)}"


# ISO 4217 alpha → numeric for the currencies the acquirer settles.
CURRENCY_NUMERIC: Final[Mapping[str, str]] = {
    "AED": "784", "AUD": "036", "BHD": "048", "BRL": "986", "CAD": "124", "CHF": "756",
    "CNY": "156", "CZK": "203", "DKK": "208", "EUR": "978", "GBP": "826", "HKD": "344",
    "IDR": "360", "INR": "356", "JOD": "400", "JPY": "392", "KRW": "410", "KWD": "414",
    "MOP": "446", "MXN": "484", "MYR": "458", "NOK": "578", "NZD": "554", "OMR": "512",
    "PHP": "608", "PLN": "985", "QAR": "634", "SAR": "682", "SEK": "752", "SGD": "702",
    "THB": "764", "TRY": "949", "TWD": "901", "USD": "840", "VND": "704", "ZAR": "710",
}  # fmt: skip
CURRENCY_ALPHA: Final[Mapping[str, str]] = {numeric: alpha for alpha, numeric in CURRENCY_NUMERIC.items()}


def currency_numeric(alpha: str) -> str:
    numeric = CURRENCY_NUMERIC.get(alpha.upper())
    if numeric is None:
        raise InvalidParams(f"currency {alpha[:8]} is not settled by the card acquirer")
    return numeric


MAX_WIRE_AMOUNT: Final = 999_999_999_999


def wire_amount(amount: int) -> str:
    if not 0 < amount <= MAX_WIRE_AMOUNT:
        raise InvalidParams("amount must be between 1 and 999999999999 minor units")
    return f"{amount:012d}"


# ---- messages --------------------------------------------------------------------------------

PURCHASE: Final = "000000"
REFUND: Final = "200000"
SIGN_ON: Final = "001"
SIGN_OFF: Final = "002"
ECHO: Final = "301"
INQUIRY_FLAG: Final = "INQ"
REVERSED_FLAG: Final = "REVERSED"
NO_STAN: Final = "000000"
NO_TIME: Final = "0000000000"


@dataclass(frozen=True, slots=True)
class Terminal:
    """Who sends: the terminal id (field 41) and the merchant (field 42, the tenant)."""

    terminal_id: str = "PAYHUB01"
    merchant: str = "payhub"

    def fields(self) -> Message:
        return {"41": self.terminal_id[:8].ljust(8), "42": merchant_id(self.merchant)}


@dataclass(frozen=True, slots=True)
class Original:
    """Field 90: which earlier transaction a capture, reversal or refund is about."""

    mti: str
    rrn: str
    stan: str = NO_STAN
    transmitted: str = NO_TIME

    def encode(self) -> str:
        return f"{self.mti}{self.stan}{self.transmitted}{self.rrn}"

    @classmethod
    def decode(cls, value: str) -> Original:
        if len(value) != ORIGINAL_DATA_LEN:
            raise WireError("field 90 has the wrong length")
        return cls(mti=value[0:4], stan=value[4:10], transmitted=value[10:20], rrn=value[20:32])


def _mmddhhmmss(now: datetime) -> str:
    # now.strftime("%m%d%H%M%S"), in a quarter of the time
    return "%02d%02d%02d%02d%02d" % (now.month, now.day, now.hour, now.minute, now.second)  # noqa: UP031


def stamp(now: datetime) -> Message:
    """Fields 7, 12 and 13 from one clock reading (UTC; the terminal's local time is UTC too)."""
    transmitted = _mmddhhmmss(now)
    return {"7": transmitted, "12": transmitted[4:], "13": transmitted[:4]}


def network(code: str, *, stan: str, now: datetime) -> Message:
    """0800 network management: sign-on (001), sign-off (002), echo test (301)."""
    return {"t": "0800", "7": _mmddhhmmss(now), "11": stan, "70": code}


def _card_fields(card: CardData) -> Message:
    pan = card.number
    if not (pan.isdigit() and 12 <= len(pan) <= 19):
        raise InvalidParams("card number must be 12 to 19 digits")
    if not 1 <= card.exp_month <= 12:
        raise InvalidParams("card expiry month must be 1 to 12")
    fields = {"2": pan, "14": f"{card.exp_year % 100:02d}{card.exp_month:02d}"}
    if card.cvc is not None:
        if not (card.cvc.isdigit() and 3 <= len(card.cvc) <= 4):
            raise InvalidParams("card CVC must be 3 or 4 digits")
        fields["126"] = card.cvc
    return fields


def authorization(request: PaymentRequest, *, stan: str, now: datetime, terminal_id: str) -> Message:
    """0200 purchase when the payment captures at once, else 0100 authorization (captured by 0220)."""
    if request.card is None:
        raise InvalidParams("card data missing")
    return {
        "t": "0200" if request.capture else "0100",
        **_card_fields(request.card),
        "3": PURCHASE,
        "4": wire_amount(request.amount),
        **stamp(now),
        "11": stan,
        "37": rrn_for(request.attempt_id),
        **Terminal(terminal_id, request.tenant).fields(),
        "49": currency_numeric(request.currency),
    }


def capture_advice(
    *,
    attempt_id: str,
    authorization_rrn: str,
    amount: int,
    currency: str,
    stan: str,
    now: datetime,
    terminal: Terminal,
    approval_code: str | None = None,
    repeat: bool = False,
) -> Message:
    """0220 (0221 when repeated): capture ``amount`` of the authorization named in field 90."""
    message = {
        "t": "0221" if repeat else "0220",
        "3": PURCHASE,
        "4": wire_amount(amount),
        **stamp(now),
        "11": stan,
        "37": rrn_for(attempt_id),
        **terminal.fields(),
        "49": currency_numeric(currency),
        "90": Original("0100", authorization_rrn).encode(),
    }
    if approval_code:
        message["38"] = approval_code
    return message


def reversal(
    *,
    rrn: str,
    original: Original,
    stan: str,
    now: datetime,
    terminal: Terminal,
    amount: str | None = None,
    currency: str | None = None,
    repeat: bool = False,
) -> Message:
    """0400 (0401 when repeated): undo the transaction named in field 90.

    ``rrn`` is the RRN of the attempt sending it: the original's own RRN when a request went
    unanswered and is reversed, the void attempt's RRN for a void. Amount and currency are the
    original's wire values when known (a void only knows the authorization's reference).
    """
    message = {
        "t": "0401" if repeat else "0400",
        "3": PURCHASE,
        **stamp(now),
        "11": stan,
        "37": rrn,
        **terminal.fields(),
        "90": original.encode(),
    }
    if amount is not None:
        message["4"] = amount
    if currency is not None:
        message["49"] = currency
    return message


def original_of(request: Message) -> Original:
    """Field 90 for reversing an unanswered request (same STAN, transmission time and RRN)."""
    return Original(request["t"], request["37"], request["11"], request["7"])


def reversal_of(request: Message, *, stan: str, now: datetime, repeat: bool = False) -> Message:
    """Reverse a request that got no answer, with its original data elements."""
    terminal_fields = {"41": request["41"], "42": request["42"]}
    message = {
        "t": "0401" if repeat else "0400",
        "3": request["3"],
        "4": request["4"],
        **stamp(now),
        "11": stan,
        "37": request["37"],
        **terminal_fields,
        "49": request["49"],
        "90": original_of(request).encode(),
    }
    return message


def refund(
    *,
    attempt_id: str,
    payment_rrn: str,
    amount: int,
    currency: str,
    stan: str,
    now: datetime,
    terminal: Terminal,
) -> Message:
    """0200 with processing code 20 (refund) of the purchase named in field 90; its own RRN."""
    return {
        "t": "0200",
        "3": REFUND,
        "4": wire_amount(amount),
        **stamp(now),
        "11": stan,
        "37": rrn_for(attempt_id),
        **terminal.fields(),
        "49": currency_numeric(currency),
        "90": Original("0200", payment_rrn).encode(),
    }


# operation → (MTI, processing code) of the inquiry that asks the acquirer about an attempt.
INQUIRY_MTI: Final[Mapping[str, tuple[str, str]]] = {
    "authorize": ("0100", PURCHASE),
    "capture": ("0220", PURCHASE),
    "refund": ("0200", REFUND),
    "void": ("0400", PURCHASE),
}


def inquiry(*, attempt_id: str, operation: str, stan: str, now: datetime, terminal: Terminal) -> Message:
    """Ask what became of an attempt, by its RRN alone (field 48 = INQ): no PAN needed.

    The acquirer answers from its book with the original answer, ``REVERSED`` in field 48 if
    the transaction was reversed since, or response code 25 when it never saw the RRN.
    """
    shape = INQUIRY_MTI.get(operation)
    if shape is None:
        raise InvalidParams(f"no status inquiry for operation {operation}")
    mti, processing = shape
    return {
        "t": mti,
        "3": processing,
        **stamp(now),
        "11": stan,
        "37": rrn_for(attempt_id),
        **terminal.fields(),
        "48": INQUIRY_FLAG,
    }


def is_inquiry(message: Message) -> bool:
    return message.get("48") == INQUIRY_FLAG


# ---- responses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Meaning:
    outcome: Outcome
    decline_code: str | None
    message: str


APPROVED: Final = Meaning(Outcome.SUCCEEDED, None, "approved")
# Field 39 → what it means. Anything not listed is PENDING (never guess a failure).
RESPONSE_CODES: Final[Mapping[str, Meaning]] = {
    "00": APPROVED,
    "05": Meaning(Outcome.FAILED, "do_not_honor", "do not honor"),
    "12": Meaning(Outcome.FAILED, "card_declined", "invalid transaction"),
    "13": Meaning(Outcome.FAILED, "amount_not_allowed", "invalid amount"),
    "14": Meaning(Outcome.FAILED, "card_declined", "invalid card number"),
    "25": Meaning(Outcome.FAILED, "connector_unavailable", "unknown at the acquirer: nothing happened"),
    "51": Meaning(Outcome.FAILED, "insufficient_funds", "insufficient funds"),
    "54": Meaning(Outcome.FAILED, "expired_card", "expired card"),
    "N7": Meaning(Outcome.FAILED, "incorrect_cvc", "CVV2 mismatch"),
    "82": Meaning(Outcome.FAILED, "incorrect_cvc", "CVV verification failed"),
    "91": Meaning(Outcome.FAILED, "connector_unavailable", "issuer unavailable"),
}
# A reversal is acknowledged (nothing left held) by 00, or by 25: the acquirer never saw the original.
REVERSAL_ACKNOWLEDGED: Final = frozenset({"00", "25"})


def meaning(code: str) -> Meaning:
    return RESPONSE_CODES.get(code) or Meaning(Outcome.PENDING, None, f"unmapped response code {code}")


def _amount(message: Message) -> int:
    value = message.get("4", "")
    return int(value) if value.isdigit() else 0


def result(operation: str, response: Message) -> ConnectorResult:
    """The core's view of a response to ``operation`` (authorize, capture, void, refund, inquiries)."""
    code = response.get("39", "")
    reference = response.get("37")
    if response.get("48") == REVERSED_FLAG:
        return ConnectorResult(
            Outcome.FAILED,
            reference,
            decline_code="connector_unavailable",
            message="reversed at the acquirer: never charged",
            raw_code=code,
        )
    known = meaning(code)
    if known.outcome is not Outcome.SUCCEEDED:
        return ConnectorResult(
            known.outcome, reference, decline_code=known.decline_code, message=known.message, raw_code=code
        )
    amount = _amount(response)
    if operation == "authorize":
        captured = amount if response.get("t") == "0210" else 0
        return ConnectorResult(
            Outcome.SUCCEEDED, reference, amount_authorized=amount, amount_captured=captured, raw_code=code
        )
    if operation == "capture":
        return ConnectorResult(Outcome.SUCCEEDED, reference, amount_captured=amount, raw_code=code)
    return ConnectorResult(Outcome.SUCCEEDED, reference, raw_code=code)
