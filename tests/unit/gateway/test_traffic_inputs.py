"""The pre-parse JSON scan: exact depth and string length, linear on hostile input."""

from __future__ import annotations

import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.traffic.inputs import check_json_depth, check_json_shape

MiB = 1 << 20


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def longest_string(value: Any) -> int:
    """Longest string token (keys too) as it appears in compact json.dumps output, quotes excluded."""
    if isinstance(value, str):
        return len(json.dumps(value, ensure_ascii=False).encode()) - 2
    if isinstance(value, dict):
        return max([0, *(longest_string(k) for k in value), *(longest_string(v) for v in value.values())])
    if isinstance(value, list):
        return max([0, *(longest_string(v) for v in value)])
    return 0


# Strings full of the characters the scan must not be fooled by.
tricky_text = st.text(alphabet=st.sampled_from(list('[]{}"\\ ,:ab\n\u00e9\u4e2d')), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(min_value=1, max_value=8))
def test_depth_matches_a_real_parse(value: Any, limit: int) -> None:
    body = json.dumps(value, ensure_ascii=False).encode()
    assert check_json_depth(body, limit) == (depth(value) <= limit)


@settings(max_examples=300, deadline=None)
@given(value=json_values, limit=st.integers(min_value=0, max_value=10))
def test_string_length_matches_a_real_parse(value: Any, limit: int) -> None:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    violation = check_json_shape(body, max_depth=1000, max_string_bytes=limit)
    assert (violation is not None and violation.reason == "string_too_long") == (
        longest_string(value) > limit
    )


def test_brackets_and_escapes_inside_strings_do_not_count() -> None:
    assert check_json_depth(b'{"a": "[[[[[[[[[[", "b": "\\"[[[[[[[["}', 2)
    assert check_json_depth(b'["\\\\", [[1]]]', 3)
    assert not check_json_depth(b'["\\\\", [[[1]]]]', 3)
    assert check_json_shape(b'{"k": "' + b"\\n" * 40 + b'"}', max_depth=4, max_string_bytes=80) is None
    violation = check_json_shape(b'{"k": "' + b"\\n" * 41 + b'"}', max_depth=4, max_string_bytes=80)
    assert violation is not None
    assert violation.reason == "string_too_long"


def test_a_long_run_outside_strings_is_not_a_long_string() -> None:
    numbers = b'{"n": [' + b"1," * 5000 + b'1], "s": "short"}'
    assert check_json_shape(numbers, max_depth=4, max_string_bytes=100) is None


def test_violations_carry_the_error_shape() -> None:
    deep = check_json_shape(b"[" * 40 + b"]" * 40, max_depth=32, max_string_bytes=8192)
    assert deep is not None
    assert (deep.reason, deep.error.status, deep.error.code) == ("json_too_deep", 400, "json_too_deep")
    long = check_json_shape(b'{"m": "' + b"x" * 9000 + b'"}', max_depth=32, max_string_bytes=8192)
    assert long is not None
    assert (long.reason, long.error.status, long.error.code) == ("string_too_long", 400, "string_too_long")


def test_malformed_input_is_left_to_the_parser() -> None:
    for body in (b"]]]]", b"[}", b'{"a": "unterminated', b"\\", b'"\\'):
        assert check_json_shape(body, max_depth=2, max_string_bytes=8192) is None


def test_msgspec_alone_would_crash_on_depth() -> None:
    """Why the scan exists: a deep body is a RecursionError (HTTP 500) in the parser, not a 400."""
    with pytest.raises(RecursionError):
        msgspec.json.decode(b"[" * 5000 + b"]" * 5000)
    assert not check_json_depth(b"[" * 5000 + b"]" * 5000, 32)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * MiB,
        b'"' * MiB,
        b'"",' * (MiB // 3),
        b'[""],' * (MiB // 5),
        b'"' + b'\\"' * (MiB // 2),
        b"\\" * MiB,
        (b"[" * 20 + b"]" * 20 + b",") * (MiB // 41),
        b'{"k":' * (MiB // 5),
    ],
    ids=[
        "open",
        "quotes",
        "empty-strings",
        "bracketed-strings",
        "escaped-quotes",
        "backslashes",
        "nested",
        "keys",
    ],
)
def test_hostile_megabyte_is_scanned_in_bounded_time(body: bytes) -> None:
    started = time.perf_counter()
    check_json_shape(body, max_depth=32, max_string_bytes=8192)
    assert time.perf_counter() - started < 1.0  # tens of ms in practice; generous for slow CI
