"""Hostile-input checks on request bodies: read deadline, JSON nesting depth and string length.

Why a scan before the real parse: msgspec recurses on nesting, so a 1 KiB body of ``[[[[…`` makes
it raise ``RecursionError`` (a 500, not a 400), and a single 1 MiB string is accepted by any
``str`` field without a ``max_length``. The scan is a handful of C-level bytes operations with
no Python loop per byte or per token, so it costs a few microseconds on a normal request body
and tens of milliseconds at worst on a hostile 1 MiB one (the body cap):

1. escape sequences ``\\\\`` and ``\\"`` are overwritten with two placeholder bytes, so every
   remaining ``"`` delimits a string and string lengths are unchanged;
2. string length: search for a run of more than ``max_string_bytes`` non-quote bytes; it is
   inside a string when an odd number of quotes precedes it (runs outside strings, such as a
   long array of numbers, are skipped);
3. nesting: only when there are more brackets than the limit could use, strings are cut out
   (every other quote-separated piece), brackets kept, and innermost ``[]`` pairs deleted once
   per level: a pass removes exactly one level, so anything left after ``max_depth`` passes is
   nested deeper than allowed.

It does not validate JSON: malformed bodies are not judged here and reach the parser, which
rejects them with ``invalid_json``. Numbers are not checked (msgspec bounds them by type).
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass

from aiohttp import web

from gateway import errors

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SAME_BRACKETS = bytes.maketrans(b"{}", b"[]")


class RequestTimeout(errors.InvalidRequest):
    """408: the client did not send its request within the deadline (slow client)."""

    status = 408
    default_code = "request_timeout"


@dataclass(frozen=True, slots=True)
class ShapeViolation:
    reason: str  # metric label: json_too_deep | string_too_long
    error: errors.ApiError


def _neutralize_escapes(body: bytes) -> bytes:
    if b"\\" not in body:
        return body
    # Backslash runs pair up from the left, exactly as a JSON parser reads them.
    return body.replace(b"\\\\", b"__").replace(b'\\"', b"__")


@functools.lru_cache(maxsize=8)  # one limit per configuration: compiled once, not per request
def _long_run(limit: int) -> re.Pattern[bytes]:
    return re.compile(rb'[^"]{%d,}+' % (limit + 1))


def _string_longer_than(text: bytes, limit: int) -> bool:
    long_run = _long_run(limit)
    quotes, counted_to, pos = 0, 0, 0
    while (match := long_run.search(text, pos)) is not None:
        start = match.start()
        quotes += text.count(b'"', counted_to, start)
        counted_to = start
        if quotes % 2 == 1:
            return True
        pos = match.end()
    return False


def _nesting_deeper_than(text: bytes, max_depth: int) -> bool:
    if len(text.translate(None, _NOT_BRACKETS)) <= 2 * max_depth:  # depth d needs 2d brackets
        return False
    outside_strings = b"".join(text.split(b'"')[0::2]) if b'"' in text else text
    brackets = outside_strings.translate(_SAME_BRACKETS, _NOT_BRACKETS)
    if len(brackets) <= 2 * max_depth:
        return False
    if b"[" * (max_depth + 1) in brackets:  # the usual attack, found without the passes
        return True
    for _ in range(max_depth):
        reduced = brackets.replace(b"[]", b"")
        if not reduced:
            return False
        if len(reduced) == len(brackets):  # unbalanced: not JSON, leave it to the parser
            return False
        brackets = reduced
    return True


def check_json_depth(body: bytes, max_depth: int) -> bool:
    """Whether ``body`` nests arrays/objects at most ``max_depth`` deep (brackets in strings ignored).

    ``{"a": [1]}`` has depth 2. Malformed input is not judged (True) so the parser can name it.
    """
    return not _nesting_deeper_than(_neutralize_escapes(body), max_depth)


def check_json_shape(body: bytes, *, max_depth: int, max_string_bytes: int) -> ShapeViolation | None:
    """The first limit ``body`` breaks, if any: string length (escaped bytes), then nesting depth."""
    text = _neutralize_escapes(body)
    if _string_longer_than(text, max_string_bytes):
        return ShapeViolation(
            "string_too_long",
            errors.InvalidRequest(
                f"A string in the request body is longer than {max_string_bytes} bytes.",
                code="string_too_long",
            ),
        )
    if _nesting_deeper_than(text, max_depth):
        return ShapeViolation(
            "json_too_deep",
            errors.InvalidRequest(
                f"The request body nests objects or arrays more than {max_depth} levels deep.",
                code="json_too_deep",
            ),
        )
    return None


async def read_body(request: web.Request, deadline: float) -> bytes:
    """Read (and cache, for the handler's own ``read()``/``json()``) the body within ``deadline`` s.

    Raises RequestTimeout for a slow sender; aiohttp's size cap (``client_max_size``) raises
    HTTPRequestEntityTooLarge, which the error middleware maps to 413.
    """
    try:
        async with asyncio.timeout(deadline):
            return await request.read()
    except TimeoutError as exc:
        raise RequestTimeout(f"The request body did not arrive within {deadline:g} seconds.") from exc
