"""Structured JSON logs on stdout, with card numbers and secrets redacted.

Every line, whether it comes from structlog or from a stdlib ``logging`` logger (aiohttp, asyncio), goes
through one processor chain::

    request context → add_log_level → ts (ISO 8601, UTC) → logger name → format_exc_info → redact → orjson

``redact`` runs last before rendering, after tracebacks have been turned into text, so nothing reaches the
output without passing it (DESIGN §7: no PAN, CVV, OTP, key or secret in any log). It does two things:

* values under a sensitive key (``SENSITIVE_KEYS`` and the suffix rules in ``is_sensitive_key``) become
  ``"[REDACTED]"`` at any depth;
* every other string (and dict key, bytes value, and 13-19 digit Luhn-valid integer) has card-number-like
  digit runs masked to BIN + last four by ``mask_pans``;

except for scalars under the few top-level keys of ``SAFE_KEYS`` (level, ts, request_id, route, status,
...): values the gateway produces itself, passed through without scanning.

Objects the walk does not know (dataclasses, msgspec Structs, exceptions, ...) are turned into builtins
first, so orjson never serializes a field or ``repr`` the redaction has not seen.

One line per request: ``open_request``/``close_request`` (the context middleware) put ``request_id`` and
``tenant`` on every line of a request, and end it with one line: the ``http.request`` access line, or, for
a request that wrote audit lines, its first audit line carrying the access fields in ``"http"``.

Lines are written by a buffered sink (``_Sink``): on a running event loop, one ``write()`` per loop turn
(and at once for an error line, after ``MAX_LINES``, on ``flush_logs``, at stream changes and at exit).

Loggers are cached on first use (``cache_logger_on_first_use``), so the processor list and the output sink
are module-level objects that ``configure_logging`` reconfigures in place: a second call (tests pass their
own stream) redirects loggers that are already cached. The minimum level, however, is baked into the
filtering wrapper class, so a logger already used keeps the level it was first used with.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import datetime
import functools
import io
import json
import logging
import math
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import IO, Any, Final, cast

import msgspec
import orjson
import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = [
    "SAFE_KEYS",
    "SENSITIVE_KEYS",
    "RedactingJsonHandler",
    "RequestScope",
    "audit",
    "bind_tenant",
    "close_request",
    "configure_logging",
    "current_request_id",
    "flush_logs",
    "get_logger",
    "is_sensitive_key",
    "mask_pans",
    "open_request",
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


def _scrub_mapping(
    mapping: Mapping[Any, Any], path: list[int], safe: frozenset[str] = frozenset()
) -> dict[str, Any] | Mapping[Any, Any]:
    out: dict[str, Any] | None = None
    new_value: Any
    for index, (key, value) in enumerate(mapping.items()):
        # Short plain strings (most keys and values) cannot hold a PAN: skip the calls on the hot path.
        if type(key) is not str:  # orjson only accepts str keys; render others as text, masked like any text
            new_key, new_value = mask_pans(str(key)), _scrub(value, path)
        elif key in safe and type(value) in _SAFE_SCALARS:  # SAFE_KEYS, at the top level only
            new_key, new_value = key, value
        else:
            new_key = key if len(key) < _PAN_MIN else mask_pans(key)
            new_value = (
                REDACTED
                if is_sensitive_key(key)
                else (value if len(value) < _PAN_MIN else mask_pans(value))
                if type(value) is str
                else _scrub(value, path)
            )
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


# Top-level keys whose values the gateway itself produces, never from client input: a scalar under one of
# them (str, int, float, bool, None) is passed through without scanning. Anything else under them (a
# dict, a list, an object) and every nested occurrence of these names is scrubbed as usual.
#
#   level, ts, logger     set by the processors (level name, clock, the logger's name in code)
#   request_id            new_request_id(), from the request context (gateway.middlewares)
#   audit, audit_seq      audit(): the marker and the audit table's sequence number
#   action, actor         audit(): the action name (a constant in code) and the caller's SPIFFE id (its
#   outcome               client certificate, issued by our CA) or "payhub"; the outcome (a status name)
#   route, status         the request line: the route *template* (never the raw path), the HTTP status or
#   duration_ms           an object's status name, the measured duration
#
# Adding a key here is a decision that no caller will ever log client text under that name at the top
# level of a line; like _NON_SECRET_KEY_NAMES, entries are added one by one, deliberately.
SAFE_KEYS: Final = frozenset(
    {
        "level",
        "ts",
        "logger",
        "request_id",
        "audit",
        "audit_seq",
        "action",
        "actor",
        "outcome",
        "route",
        "status",
        "duration_ms",
    }
)
_SAFE_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
assert not any(is_sensitive_key(key) for key in SAFE_KEYS)


def redact(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact sensitive keys and mask PANs everywhere in the event.

    Scalars under ``SAFE_KEYS`` at the top level pass as they are; everything else is scrubbed.
    Containers that change are copied, never modified, so objects the caller passed in stay intact.
    """
    return cast(EventDict, _scrub_mapping(event_dict, [], SAFE_KEYS))


# ---------------------------------------------------------------------------------------------------------
# Output: a buffered sink


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_ATOMIC_WRITE: Final = 4096  # PIPE_BUF on Linux: the largest write() that is never interleaved on a pipe


class _Sink:
    """The binary file every line goes to; ``configure_logging`` retargets it.

    Cached loggers hold this object, not the stream, so reconfiguring reaches them. With no stream set it
    writes to whatever ``sys.stdout`` is at the time (pytest swaps it per test).

    Lines logged on a running event loop are gathered and written with one ``write()`` (and one flush)
    per loop turn: the first line of a batch schedules the flush with ``call_soon``, so it runs once the
    current callbacks are done. A batch is written at once when it reaches ``MAX_LINES`` or when an
    ``error`` or worse line joins it, and whatever is pending is written before the stream changes, when
    the app stops (``flush_logs``) and at interpreter exit. Lines logged with no running loop in the
    thread (start-up, CLI commands, other threads) are written through at once.
    """

    MAX_LINES: Final = 256

    def __init__(self) -> None:
        self.stream: IO[str] | IO[bytes] | None = None
        self._write: Callable[[bytes], object] = self._write_stdout
        self._flush: Callable[[], object] = self._flush_stdout
        self._lock = threading.Lock()
        self._pending: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop whose call_soon flushes _pending

    def set_stream(self, stream: IO[str] | IO[bytes] | None) -> None:
        with self._lock:
            self._flush_pending()  # lines logged before the switch go where they were meant to go
            self.stream = stream
            if stream is None:
                self._write, self._flush = self._write_stdout, self._flush_stdout
            elif isinstance(stream, io.TextIOBase) or hasattr(stream, "encoding"):
                text = cast(IO[str], stream)
                self._write, self._flush = (lambda data: text.write(data.decode("utf-8"))), text.flush
            else:
                binary = cast(IO[bytes], stream)
                self._write, self._flush = binary.write, binary.flush

    def emit(self, line: bytes, *, urgent: bool = False) -> None:
        """Write one rendered line (without its newline), now or with the current loop turn's batch."""
        loop = _running_loop()
        with self._lock:
            owner = self._loop
            if owner is not None and owner is not loop and not owner.is_running():
                self._flush_pending()  # its loop stopped before flushing: keep the order
                owner = None
            if loop is None or (owner is not None and owner is not loop):
                # No loop here, or another thread's loop owns the batch: write through.
                self._write(line + b"\n")
                self._flush()
                return
            pending = self._pending
            pending.append(line)
            if owner is None:
                self._loop = loop
                loop.call_soon(self._flush_soon)
            if urgent or len(pending) >= self.MAX_LINES:
                self._flush_pending()

    def flush(self) -> None:
        """Write what is pending now."""
        with self._lock:
            self._flush_pending()

    def _flush_soon(self) -> None:
        # stdout closed or broken: nowhere left to write to, and no caller to tell
        with self._lock, contextlib.suppress(OSError, ValueError):
            self._flush_pending()

    def _flush_pending(self) -> None:
        lines = self._pending
        self._loop = None
        if not lines:
            return
        self._pending = []
        # Several processes (--workers) may share the output: one write() of at most PIPE_BUF bytes is
        # atomic on a pipe, so a batch goes out in such chunks, never splitting a line (a longer line
        # gets a write of its own, as it always did).
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            if chunk and size + len(line) >= _ATOMIC_WRITE:
                self._write_chunk(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        self._write_chunk(chunk)

    def _write_chunk(self, lines: list[bytes]) -> None:
        lines.append(b"")
        self._write(b"\n".join(lines))
        self._flush()  # a write() of its own: buffered streams would merge chunks past PIPE_BUF

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


_SINK: Final = _Sink()


def flush_logs() -> None:
    """Write every pending line now (the app calls it when it stops; lines are also written at exit)."""
    _SINK.flush()


@atexit.register
def _flush_at_exit() -> None:
    with contextlib.suppress(Exception):  # stdout may be closed already: nothing left to write to
        _SINK.flush()


class _SinkLogger:
    """What structlog's bound loggers write their rendered lines to: the shared sink."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: bytes) -> None:
        _SINK.emit(message)

    def urgent(self, message: bytes) -> None:
        _SINK.emit(message, urgent=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = urgent


def _sink_logger(*args: Any) -> _SinkLogger:
    return _SinkLogger(args[0] if args and isinstance(args[0], str) else None)


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


# ---------------------------------------------------------------------------------------------------------
# The request context: request_id and tenant on every line, and one line per request


class _Request:
    """What ``open_request`` binds for one HTTP request (gateway.middlewares)."""

    __slots__ = ("audits", "open", "request_id", "tenant")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.tenant: str | None = None
        self.audits: list[bytes] | None = None  # rendered audit lines, written when the request ends
        self.open = True


_REQUEST: Final[contextvars.ContextVar[_Request | None]] = contextvars.ContextVar(
    "payhub_log_request", default=None
)
# structlog's own context variables (bind_contextvars); its merge copies the whole context and walks every
# variable in it, so it only runs once something was bound that way (not by the gateway itself).
_STRUCTLOG_VARS: Final[Mapping[str, object] | None] = getattr(structlog.contextvars, "_CONTEXT_VARS", None)


def _merge_context(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    if _STRUCTLOG_VARS is None or _STRUCTLOG_VARS:
        event_dict = structlog.contextvars.merge_contextvars(logger, method_name, event_dict)
    request = _REQUEST.get()
    if request is not None:
        event_dict.setdefault("request_id", request.request_id)
        if request.tenant is not None:
            event_dict.setdefault("tenant", request.tenant)
    return event_dict


class _Clock:
    second: tuple[int, str] = (-1, "")  # (Unix second, its "YYYY-MM-DDThh:mm:ss."), swapped as one


def _add_timestamp(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """``ts``: ISO 8601 in UTC to the microsecond, "2026-05-09T07:35:25.123456Z" (the date and time to
    the second are formatted once per second)."""
    seconds, nanos = divmod(time.time_ns(), 1_000_000_000)
    second, prefix = _Clock.second
    if seconds != second:
        prefix = datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _Clock.second = (seconds, prefix)
    event_dict["ts"] = f"{prefix}{nanos // 1000:06d}Z"
    return event_dict


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    if "logger" not in event_dict:
        record = event_dict.get("_record")
        name = record.name if record is not None else getattr(logger, "name", None)
        if name:
            event_dict["logger"] = name
    return event_dict


_PRE_CHAIN: Final[list[Processor]] = [
    _merge_context,
    structlog.processors.add_log_level,
    _add_timestamp,
    _add_logger_name,
    structlog.processors.format_exc_info,
]
# One list object for the life of the process: cached loggers keep a reference to it.
_PROCESSORS: Final[list[Processor]] = [
    *_PRE_CHAIN,
    redact,
    structlog.processors.JSONRenderer(serializer=_dumps),
]
_RENDER_CHAIN: Final = (*_PRE_CHAIN, redact)


def _render(event_dict: EventDict, logger_name: str) -> bytes:
    """One info line through the same processors as a structlog call, without a bound logger."""
    event: Any = event_dict
    logger = _NAMED[logger_name]
    for processor in _RENDER_CHAIN:
        event = processor(logger, "info", event)
    return _dumps(event)


_NAMED: Final = {name: _SinkLogger(name) for name in ("audit", "gateway.access")}


class RedactingJsonHandler(logging.Handler):
    """Root handler that renders stdlib records (aiohttp, asyncio, ...) like structlog events."""

    def __init__(self) -> None:
        super().__init__()
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
            _SINK.emit(self.format(record).encode("utf-8"), urgent=record.levelno >= logging.ERROR)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # logging.Handler.handleError prints the raw message and arguments to stderr; they may hold a PAN.
        error = type(sys.exc_info()[1]).__name__
        line = {"event": "logging_error", "level": "error", "logger": record.name, "error": error}
        with contextlib.suppress(Exception):  # nowhere left to report a failing log sink
            _SINK.emit(orjson.dumps(line), urgent=True)


_HANDLER: Final = RedactingJsonHandler()


def _level_number(level: str) -> int:
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


class _Levels:
    access = True  # whether the configured level lets the info-level access lines through


_LEVELS: Final = _Levels()


def _configure_structlog(level: int) -> None:
    _LEVELS.access = level <= logging.INFO
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        context_class=dict,
        logger_factory=_sink_logger,
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


class RequestScope:
    """An open request's log context (``open_request``); pass it to ``close_request``."""

    __slots__ = ("_request", "_token")

    def __init__(self, request: _Request, token: contextvars.Token[_Request | None]) -> None:
        self._request = request
        self._token = token


def open_request(request_id: str) -> RequestScope:
    """Start one request's log context: every line logged in it (and in tasks it starts) carries
    ``request_id`` (and ``tenant`` once bound), and its audit lines wait for ``close_request``."""
    request = _Request(request_id)
    return RequestScope(request, _REQUEST.set(request))


def current_request_id() -> str | None:
    """The id of the request being served here (``open_request``), None outside one (background work)."""
    request = _REQUEST.get()
    return request.request_id if request is not None else None


def bind_tenant(tenant: str) -> None:
    """Name the current request's tenant on its lines from now on (no-op outside a request)."""
    request = _REQUEST.get()
    if request is not None:
        request.tenant = tenant


def close_request(
    scope: RequestScope,
    *,
    method: str,
    path: str,
    route: str,
    status: int,
    duration_ms: float,
    tenant: str | None,
    peer: str | None,
) -> None:
    """End a request with its one line (docs/operations.md, "Logs").

    A request that wrote audit lines gets no separate access line: its first audit line carries the
    access fields in ``"http"`` (``method``, ``path``, ``route``, ``status``, ``duration_ms``, ``peer``;
    ``request_id`` and ``tenant`` are on every line already), and its audit lines are written now, in
    order. Any other request gets the ``http.request`` access line (info level: filtered like any info
    line, while audit lines never are).
    """
    request = scope._request
    try:
        audits = request.audits
        if audits:
            http = {
                "method": mask_pans(method),
                "path": mask_pans(path),
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "peer": mask_pans(peer) if peer is not None else None,
            }
            # The rendered audit line is a JSON object: "}" becomes ',"http":{...}}'.
            audits[0] = b"".join((audits[0][:-1], b',"http":', _dumps(http), b"}"))
            for line in audits:
                _SINK.emit(line)
        elif _LEVELS.access:
            access = {
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": duration_ms,
                "tenant": tenant,
                "peer": peer,
                "event": "http.request",
            }
            _SINK.emit(_render(access, "gateway.access"))
    finally:
        request.open = False
        request.audits = None
        _REQUEST.reset(scope._token)


_AUDIT_RESERVED: Final = frozenset({"event", "audit", "object", "level", "ts", "logger", "http"})


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

    This is the stdout half of the audit trail; the hash-chained table is the other. Audit lines are never
    filtered by level. In a request (``open_request``) the line is rendered now and written when the
    request ends, the first one carrying the request's access fields (``close_request``).
    """
    clash = _AUDIT_RESERVED.intersection(fields)
    if clash:
        raise TypeError(f"audit() fields may not use reserved names: {sorted(clash)}")
    event: EventDict = {
        "audit": True,
        "action": action,
        "actor": actor,
        "tenant": tenant,
        "outcome": outcome,
        "source": source,
        "object": object_id,
        **fields,
        "event": "audit",
    }
    line = _render(event, "audit")
    request = _REQUEST.get()
    if request is not None and request.open:
        if request.audits is None:
            request.audits = [line]
        else:
            request.audits.append(line)
    else:
        _SINK.emit(line)
