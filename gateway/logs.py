"""Structured JSON logs on stdout, with card numbers and secrets redacted.

Every line, whether it comes from structlog or from a stdlib ``logging`` logger (aiohttp, asyncio), goes
through one processor chain::

    merge_contextvars → add_log_level → ts (ISO 8601, UTC) → logger name → format_exc_info → redact → orjson

``redact`` runs last before rendering, after tracebacks have been turned into text, so nothing reaches the
output without passing it (DESIGN §7: no PAN, CVV, OTP, key or secret in any log). It does two things:

* values under a sensitive key (``SENSITIVE_KEYS`` and the suffix rules in ``is_sensitive_key``) become
  ``"[REDACTED]"`` at any depth;
* every other string (and dict key, bytes value, and 13-19 digit Luhn-valid integer) has card-number-like
  digit runs masked to BIN + last four by ``mask_pans``.

Objects the walk does not know (dataclasses, msgspec Structs, exceptions, ...) are turned into builtins
first, so orjson never serializes a field or ``repr`` the redaction has not seen.

Loggers are cached on first use (``cache_logger_on_first_use``), so the processor list and the output sink
are module-level objects that ``configure_logging`` reconfigures in place: a second call (tests pass their
own stream) redirects loggers that are already cached. The minimum level, however, is baked into the
filtering wrapper class, so a logger already used keeps the level it was first used with.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import json
import logging
import math
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any, BinaryIO, Final, cast

import msgspec
import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "SENSITIVE_KEYS",
    "RedactingJsonHandler",
    "audit",
    "configure_logging",
    "get_logger",
    "is_sensitive_key",
    "mask_pans",
    "redact",
]

REDACTED: Final = "[REDACTED]"

# Key names (matched case-insensitively, ignoring "_", "-", " ", and any dotted prefix, so "cardNumber",
# "Card-Number" and "payment_method.card.number" all match "card_number") whose values are never logged.
SENSITIVE_KEYS: frozenset[str] = frozenset(
    {
        # Card data (PCI DSS): the PAN itself, CVV/CVC under every scheme's name, PIN and track data.
        "pan",
        "card_number",
        "number",  # payment_method.card.number in the API
        "cvc",
        "cvc2",
        "cvv",
        "cvv2",
        "security_code",
        "pin",
        "pin_block",
        "track1",
        "track2",
        "track_data",
        # One-time codes and device step-up answers.
        "otp",
        "otp_code",
        "verification_code",
        "device_signature",
        # Passwords and shared secrets (webhook signing secrets, OAuth client secrets, ...).
        "password",
        "passwd",
        "passphrase",
        "secret",
        "client_secret",
        "signing_secret",
        "webhook_secret",
        # Key material: key-encryption and data keys of the card vault, API and private keys.
        "key",
        "kek",
        "dek",
        "data_key",
        "key_material",
        "private_key",
        "secret_key",
        "api_key",
        "x-api-key",
        # Credentials in transit.
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "access_token",
        "refresh_token",
        "id_token",
        "session_token",
        "csrf_token",
    }
)

# Suffixes that mark a secret whatever the prefix ("webhook_secret", "db_password", "hmac_key", ...).
_SECRET_SUFFIXES: Final = ("secret", "password", "passwd", "passphrase", "key")

# "..._key" fails closed: every name ending in "key" is treated as cryptographic key material, except these
# names of things that are keys only in the lookup sense (or public keys). Masking a harmless key costs a
# little debugging; missing a real one leaks it, so new exceptions are added here deliberately, one by one.
_NON_SECRET_KEY_NAMES: Final = frozenset(
    {
        "idempotency_key",
        "cache_key",
        "lock_key",
        "dedup_key",
        "dedupe_key",
        "partition_key",
        "routing_key",
        "sort_key",
        "primary_key",
        "foreign_key",
        "public_key",  # also matches any "..._public_key" via the suffix check below
    }
)

_COMPACT_DROP: Final = str.maketrans("", "", "_- ")


def _compact(name: str) -> str:
    return name.lower().translate(_COMPACT_DROP)


_SENSITIVE_COMPACT: Final = frozenset(_compact(k) for k in SENSITIVE_KEYS)
_NON_SECRET_COMPACT: Final = frozenset(_compact(k) for k in _NON_SECRET_KEY_NAMES)


@functools.lru_cache(maxsize=4096)
def is_sensitive_key(key: str) -> bool:
    """Whether values under *key* are always replaced by ``"[REDACTED]"``."""
    name = _compact(key.rpartition(".")[2])
    if name in _SENSITIVE_COMPACT:
        return True
    if not name.endswith(_SECRET_SUFFIXES):
        return False
    return not (name in _NON_SECRET_COMPACT or name.endswith("publickey"))


# ---------------------------------------------------------------------------------------------------------
# PAN masking

_PAN_MIN: Final = 13
_PAN_MAX: Final = 19
_KEEP_HEAD: Final = 6
_KEEP_TAIL: Final = 4

# A maximal run of at least 13 digits, consecutive digits separated by at most one space or hyphen. Each step
# is forced (separator or not, then a digit), so matching is linear with no backtracking blow-up; a run of
# fewer than 13 digits fails after at most 12 steps per start. \d includes non-ASCII decimal digits, so a PAN
# written in full-width digits is masked too.
_RUN: Final = re.compile(r"\d(?:[ -]?\d){12,}")

# The same runs for ASCII text, found on a copy where each byte is replaced by its class: "d" digit,
# "s" space or hyphen, "x" anything else. The 13 literal "d"s give the regex engine a prefix to search for.
_ASCII_CLASSES: Final = bytes(
    ord("d") if byte in b"0123456789" else ord("s") if byte in b" -" else ord("x") for byte in range(256)
)
_THIRTEEN_DIGITS: Final = b"d" * _PAN_MIN
_ASCII_RUN: Final = re.compile(_THIRTEEN_DIGITS + b"d*")

# Luhn: every second digit from the right is doubled, minus 9 when the result exceeds 9.
_DOUBLED: Final = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def _run_digits(run: str) -> list[int]:
    compact = run.replace(" ", "").replace("-", "")
    if compact.isascii():
        return [b - 48 for b in compact.encode()]
    return [int(ch) for ch in compact]


def _luhn_valid(digits: list[int]) -> bool:
    return (sum(digits[-1::-2]) + sum([_DOUBLED[digit] for digit in digits[-2::-2]])) % 10 == 0


def _has_luhn_window(digits: list[int]) -> bool:
    """Whether some contiguous window of 13..19 of *digits* passes the Luhn check.

    Prefix sums per alignment make each window O(1), so an adversarially long run costs linear time.
    ``sums[p][k]`` is the Luhn weight of ``digits[:k]`` when the window's last digit has index parity ``p``
    (that digit and every second one to its left are taken as is, the others doubled).
    """
    if len(digits) <= _PAN_MAX and _luhn_valid(digits):  # the usual case: the run is exactly one PAN
        return True
    sums_even = [0]
    sums_odd = [0]
    even = odd = 0
    for index, digit in enumerate(digits):
        if index & 1:
            even += _DOUBLED[digit]
            odd += digit
        else:
            even += digit
            odd += _DOUBLED[digit]
        sums_even.append(even)
        sums_odd.append(odd)
    for end in range(_PAN_MIN, len(digits) + 1):  # exclusive end
        sums = sums_even if (end - 1) & 1 == 0 else sums_odd
        total = sums[end]
        for start in range(max(0, end - _PAN_MAX), end - _PAN_MIN + 1):
            if (total - sums[start]) % 10 == 0:
                return True
    return False


def _masked(digits: list[int]) -> str:
    head = "".join(map(str, digits[:_KEEP_HEAD]))
    tail = "".join(map(str, digits[-_KEEP_TAIL:]))
    return head + "*" * (len(digits) - _KEEP_HEAD - _KEEP_TAIL) + tail


def mask_pans(text: str) -> str:
    """Mask every card-number-like digit run in *text* to its first six and last four digits.

    A run is a maximal sequence of digits where single spaces or hyphens may separate consecutive digits
    ("4111 1111 1111 1111"). A run of 13 or more digits is masked as a whole (separators dropped) when any
    contiguous window of 13..19 of its digits is Luhn-valid, so a PAN glued to other digits is caught too.
    This errs towards masking: long numeric ids often contain a Luhn-valid window by chance. Returns *text*
    itself when nothing is masked.
    """
    if len(text) < _PAN_MIN:
        return text
    if text.isascii():
        # Hot path (nearly every log string). Classify bytes in C instead of running the str regex, which
        # costs several microseconds on digit-heavy lines (access logs) even when it finds nothing.
        classes = text.encode("ascii").translate(_ASCII_CLASSES)
        if classes.count(b"d") < _PAN_MIN:
            return text
        # A single separator between digits joins them; after two passes (the first one skips every other
        # separator of "d-d-d-d") each run is one block of "d" at the same offsets as in *text*. A block
        # counts its separators too, so its length only bounds its digit count: checked again below.
        classes = classes.replace(b"dsd", b"ddd").replace(b"dsd", b"ddd")
        if _THIRTEEN_DIGITS not in classes:  # a plain substring search is cheaper than a regex that fails
            return text
        spans = [match.span() for match in _ASCII_RUN.finditer(classes)]
    else:
        spans = [match.span() for match in _RUN.finditer(text)]
    pieces: list[str] = []
    last = 0
    for start, end in spans:
        digits = _run_digits(text[start:end])
        if len(digits) >= _PAN_MIN and _has_luhn_window(digits):
            pieces.append(text[last:start])
            pieces.append(_masked(digits))
            last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


# ---------------------------------------------------------------------------------------------------------
# Redaction of event dicts

_MAX_DEPTH: Final = 32
_TRUNCATED: Final = "[TRUNCATED]"
_CYCLE: Final = "[CYCLE]"
_INT_PAN_LOW: Final = 10 ** (_PAN_MIN - 1)
_INT_PAN_HIGH: Final = 10**_PAN_MAX
_ORJSON_INT_MIN: Final = -(2**63)
_ORJSON_INT_MAX: Final = 2**64 - 1
# orjson renders these natively, and none of them can carry a card number or a secret.
_PASSTHROUGH: Final = (datetime.date, datetime.time, uuid.UUID)
_KEEP_AS_IS_IN_TO_BUILTINS: Final = (
    bytes,
    bytearray,
    memoryview,
    datetime.datetime,
    datetime.date,
    datetime.time,
    uuid.UUID,
)


def _scrub_int(value: int) -> int | str:
    magnitude = -value if value < 0 else value
    if _INT_PAN_LOW <= magnitude < _INT_PAN_HIGH:
        digits = [ord(ch) - 48 for ch in str(magnitude)]
        if _luhn_valid(digits):
            return ("-" if value < 0 else "") + _masked(digits)
        return value
    if value < _ORJSON_INT_MIN or value > _ORJSON_INT_MAX:  # orjson refuses these; text it is
        return mask_pans(str(value))
    return value


def _scrub_float(value: float) -> float | str:
    # orjson writes an integral float in full ("4111111111111111.0"), so a PAN stored as a float would show.
    if math.isfinite(value) and value.is_integer() and _INT_PAN_LOW <= abs(value) < _INT_PAN_HIGH:
        scrubbed = _scrub_int(int(value))
        if isinstance(scrubbed, str):
            return scrubbed
    return value


def _scrub_mapping(mapping: Mapping[Any, Any], path: list[int]) -> dict[str, Any] | Mapping[Any, Any]:
    out: dict[str, Any] | None = None
    for index, (key, value) in enumerate(mapping.items()):
        # Short plain strings (most keys and values) cannot hold a PAN: skip the calls on the hot path.
        if type(key) is str:
            new_key = key if len(key) < _PAN_MIN else mask_pans(key)
            sensitive = is_sensitive_key(key)
        else:  # orjson only accepts str keys; render others as text, masked like any text
            new_key = mask_pans(str(key))
            sensitive = False
        if sensitive:
            new_value: Any = REDACTED
        elif type(value) is str:
            new_value = value if len(value) < _PAN_MIN else mask_pans(value)
        else:
            new_value = _scrub(value, path)
        if out is None:
            if new_key is key and new_value is value:
                continue
            out = {}
            for done, (old_key, old_value) in enumerate(mapping.items()):  # copy the unchanged prefix
                if done == index:
                    break
                out[old_key] = old_value
        out[new_key] = new_value
    if out is None:
        # Unchanged; a plain dict is returned as is, other mappings (CIMultiDict, ...) as a plain dict.
        return mapping if type(mapping) is dict else dict(mapping)
    return out


def _pair_key(item: object) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, bytes | bytearray):
        return bytes(item).decode("latin-1")
    return None


def _scrub_sequence(items: list[Any] | tuple[Any, ...], path: list[int]) -> list[Any] | tuple[Any, ...]:
    if len(items) == 2 and isinstance(items, tuple):
        # A (name, value) pair, as in raw header lists: [(b"Authorization", b"Bearer ...")].
        name = _pair_key(items[0])
        if name is not None and is_sensitive_key(name):
            return [_scrub(items[0], path), REDACTED]
    out: list[Any] | None = None
    for index, value in enumerate(items):
        new_value = _scrub(value, path)
        if out is None:
            if new_value is value:
                continue
            out = list(items[:index])
        out.append(new_value)
    return items if out is None else out


def _enc_hook(obj: Any) -> Any:
    structlog_repr = getattr(type(obj), "__structlog__", None)
    if structlog_repr is not None:
        return structlog_repr(obj)
    return repr(obj)


def _safe_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception:
        text = f"<unrepresentable {type(obj).__qualname__}>"
    return mask_pans(text)


def _scrub_container(value: Mapping[Any, Any] | list[Any] | tuple[Any, ...], path: list[int]) -> Any:
    if len(path) >= _MAX_DEPTH:
        return _TRUNCATED
    ident = id(value)
    if ident in path:
        return _CYCLE
    path.append(ident)
    try:
        if isinstance(value, Mapping):
            return _scrub_mapping(value, path)
        return _scrub_sequence(value, path)
    finally:
        path.pop()


def _scrub(value: Any, path: list[int]) -> Any:
    # Exact types first, in the order log calls use them; subclasses and the rest below.
    cls = type(value)
    if cls is str:
        return mask_pans(value)
    if cls is int:
        return _scrub_int(value)
    if value is None or cls is bool:
        return value
    if cls is dict or cls is list or cls is tuple:
        return _scrub_container(value, path)
    if cls is float:
        return _scrub_float(value)
    return _scrub_other(value, path)


def _scrub_other(value: Any, path: list[int]) -> Any:
    if isinstance(value, str):
        return mask_pans(value)
    if isinstance(value, int):  # IntEnum and friends
        return _scrub_int(value)
    if isinstance(value, float):
        return _scrub_float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return mask_pans(bytes(value).decode("latin-1"))
    if isinstance(value, _PASSTHROUGH):
        return value
    if isinstance(value, Mapping | list | tuple):
        return _scrub_container(value, path)
    if isinstance(value, set | frozenset):
        return _scrub_container(list(value), path)
    # Dataclasses, msgspec Structs, enums, Decimals, exceptions, ...: to builtins, then the walk above.
    try:
        builtins = msgspec.to_builtins(value, builtin_types=_KEEP_AS_IS_IN_TO_BUILTINS, enc_hook=_enc_hook)
    except Exception:
        return _safe_repr(value)
    return _scrub(builtins, path)


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact sensitive keys and mask PANs everywhere in the event.

    Containers that change are copied, never modified, so objects the caller passed in stay intact.
    """
    return cast(EventDict, _scrub_mapping(event_dict, []))


# ---------------------------------------------------------------------------------------------------------
# Output


class _Sink:
    """The binary file every logger writes to; ``configure_logging`` retargets it.

    Cached loggers hold this object, not the stream, so reconfiguring reaches them. With no stream set it
    writes to whatever ``sys.stdout`` is at the time (pytest swaps it per test).
    """

    def __init__(self) -> None:
        self.stream: IO[str] | IO[bytes] | None = None
        self._write: Callable[[bytes], object] = self._write_stdout
        self._flush: Callable[[], object] = self._flush_stdout

    def set_stream(self, stream: IO[str] | IO[bytes] | None) -> None:
        self.stream = stream
        if stream is None:
            self._write, self._flush = self._write_stdout, self._flush_stdout
        elif isinstance(stream, io.TextIOBase) or hasattr(stream, "encoding"):
            text = cast(IO[str], stream)
            self._write, self._flush = (lambda data: text.write(data.decode("utf-8"))), text.flush
        else:
            binary = cast(IO[bytes], stream)
            self._write, self._flush = binary.write, binary.flush

    def write(self, data: bytes) -> int:
        self._write(data)
        return len(data)

    def flush(self) -> None:
        self._flush()

    @staticmethod
    def _write_stdout(data: bytes) -> None:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            buffer.write(data)
        else:
            sys.stdout.write(data.decode("utf-8"))

    @staticmethod
    def _flush_stdout() -> None:
        sys.stdout.flush()
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is not None:
            buffer.flush()


def _json_default(obj: Any) -> Any:
    # Only reached if something slipped past redact (it should not); never let it render unmasked.
    if isinstance(obj, datetime.date | datetime.time):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    return _safe_repr(obj)


def _dumps(obj: Any, **_: Any) -> bytes:
    try:
        return orjson.dumps(obj, default=_json_default)
    except TypeError:
        # e.g. a lone surrogate from a surrogateescape-decoded path; obj is already redacted.
        return json.dumps(obj, default=_json_default, ensure_ascii=True, separators=(",", ":")).encode(
            "ascii"
        )


def _dumps_text(obj: Any, **_: Any) -> str:
    return _dumps(obj).decode("utf-8")


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    if "logger" not in event_dict:
        record = event_dict.get("_record")
        name = record.name if record is not None else getattr(logger, "name", None)
        if name:
            event_dict["logger"] = name
    return event_dict


_PRE_CHAIN: Final[list[Processor]] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
    _add_logger_name,
    structlog.processors.format_exc_info,
]
# One list object for the life of the process: cached loggers keep a reference to it.
_PROCESSORS: Final[list[Processor]] = [
    *_PRE_CHAIN,
    redact,
    structlog.processors.JSONRenderer(serializer=_dumps),
]
_SINK: Final = _Sink()


class RedactingJsonHandler(logging.Handler):
    """Root handler that renders stdlib records (aiohttp, asyncio, ...) like structlog events."""

    def __init__(self) -> None:
        super().__init__()
        self._out = structlog.BytesLogger(cast(BinaryIO, _SINK))  # shares the sink's write lock
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=_PRE_CHAIN,
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    redact,
                    structlog.processors.JSONRenderer(serializer=_dumps_text),
                ],
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._out.msg(self.format(record).encode("utf-8"))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # logging.Handler.handleError prints the raw message and arguments to stderr; they may hold a PAN.
        error = type(sys.exc_info()[1]).__name__
        line = {"event": "logging_error", "level": "error", "logger": record.name, "error": error}
        with contextlib.suppress(Exception):  # nowhere left to report a failing log sink
            self._out.msg(orjson.dumps(line))


_HANDLER: Final = RedactingJsonHandler()


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def _configure_structlog(level: int) -> None:
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        logger_factory=structlog.BytesLoggerFactory(cast(BinaryIO, _SINK)),
        cache_logger_on_first_use=True,
    )


def configure_logging(level: str = "info", *, stream: IO[str] | IO[bytes] | None = None) -> None:
    """Send structlog events and stdlib log records, redacted, as JSON lines to *stream* (default stdout).

    Safe to call again: the latest call's stream wins for every logger, cached or not.
    """
    number = _level_number(level)
    _SINK.set_stream(stream)
    _configure_structlog(number)
    root = logging.getLogger()
    for handler in list(root.handlers):
        # A plain StreamHandler (logging.basicConfig) would print third-party records unredacted.
        if handler is not _HANDLER and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    if _HANDLER not in root.handlers:
        root.addHandler(_HANDLER)
    root.setLevel(number)
    # pgserver narrates every pg_ctl call at INFO; only its problems belong in our logs.
    logging.getLogger("pgserver").setLevel(max(number, logging.WARNING))


def get_logger(name: str | None = None) -> FilteringBoundLogger:
    """A structlog logger; *name* shows up as ``"logger"`` in each line."""
    if not structlog.is_configured():
        # Never let a process that forgot configure_logging log through structlog's unredacted defaults.
        _configure_structlog(logging.INFO)
    logger: FilteringBoundLogger = structlog.get_logger(name) if name else structlog.get_logger()
    return logger


# Audit lines are never filtered by level: they are half of the audit trail, not diagnostics.
_AUDIT_LOGGER: Final[FilteringBoundLogger] = structlog.wrap_logger(
    None, wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET), logger_factory_args=("audit",)
)
_AUDIT_RESERVED: Final = frozenset({"event", "audit", "object", "level", "ts", "logger"})


def audit(
    action: str,
    *,
    actor: str,
    outcome: str,
    source: str | None = None,
    object_id: str | None = None,
    tenant: str | None = None,
    **fields: object,
) -> None:
    """Write one audit line: who (*actor*, *tenant*) did what (*action*) to which *object_id*, from where
    (*source*: IP or certificate), with what *outcome* ("success", "failure", "denied", ...); when is ``ts``.

    This is the stdout half of the audit trail; the hash-chained table is the other.
    """
    clash = _AUDIT_RESERVED.intersection(fields)
    if clash:
        raise TypeError(f"audit() fields may not use reserved names: {sorted(clash)}")
    if not structlog.is_configured():
        _configure_structlog(logging.INFO)
    _AUDIT_LOGGER.info(
        "audit",
        audit=True,
        action=action,
        actor=actor,
        tenant=tenant,
        outcome=outcome,
        source=source,
        object=object_id,
        **fields,
    )
