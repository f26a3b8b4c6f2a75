from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import orjson
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.typing import FilteringBoundLogger

from gateway import logs
from gateway.logs import RedactingJsonHandler, audit, configure_logging, get_logger, mask_pans

VISA = "4111111111111111"
VISA_MASKED = "411111******1111"


@pytest.fixture(autouse=True, scope="module")
def _restore_logging() -> Iterator[None]:
    """These tests reconfigure the process-wide logging; put back what the rest of the suite had."""
    saved = structlog.get_config()
    root = logging.getLogger()
    level = root.level
    stream = logs._SINK.stream
    yield
    logs._SINK.set_stream(stream)
    structlog.configure(**saved)
    root.setLevel(level)


def capture(emit: Callable[[FilteringBoundLogger], object], level: str = "debug") -> list[dict[str, Any]]:
    """Configure logging to a fresh buffer, run *emit*, return the parsed lines (checking each is JSON)."""
    return [orjson.loads(line) for line in capture_raw(emit, level)]


def capture_raw(emit: Callable[[FilteringBoundLogger], object], level: str = "debug") -> list[bytes]:
    buffer = io.BytesIO()
    configure_logging(level, stream=buffer)
    emit(get_logger("test"))
    data = buffer.getvalue()
    assert data.endswith(b"\n") or not data
    return data.split(b"\n")[:-1]


def luhn_check_digit(body: str) -> str:
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # doubled once the check digit is appended on the right
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return str((10 - total % 10) % 10)


def luhn_valid(digits: str) -> bool:
    return luhn_check_digit(digits[:-1]) == digits[-1]


@st.composite
def pans(draw: st.DrawFn) -> str:
    length = draw(st.integers(min_value=13, max_value=19))
    body = draw(st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1))
    return body + luhn_check_digit(body)


def grouped(pan: str, separator: str) -> str:
    return separator.join(pan[i : i + 4] for i in range(0, len(pan), 4))


# --- an independent, slow reference for mask_pans -----------------------------------------------------------


def reference_runs(text: str) -> list[tuple[int, int]]:
    runs = []
    i = 0
    while i < len(text):
        if not text[i].isdecimal():
            i += 1
            continue
        start = end = i
        j = i + 1
        end = j
        while True:
            if j < len(text) and text[j].isdecimal():
                j += 1
            elif j + 1 < len(text) and text[j] in " -" and text[j + 1].isdecimal():
                j += 2
            else:
                break
            end = j
        runs.append((start, end))
        i = end
    return runs


def reference_mask(text: str) -> str:
    out = []
    last = 0
    for start, end in reference_runs(text):
        digits = "".join(str(int(c)) for c in text[start:end] if c not in " -")
        windows = (
            digits[a:b] for a in range(len(digits)) for b in range(a + 13, min(a + 19, len(digits)) + 1)
        )
        if len(digits) >= 13 and any(luhn_valid(w) for w in windows):
            out += [text[last:start], digits[:6] + "*" * (len(digits) - 10) + digits[-4:]]
            last = end
    return "".join([*out, text[last:]])


def longest_run(text: str) -> int:
    return max((sum(c.isdecimal() for c in text[s:e]) for s, e in reference_runs(text)), default=0)


@st.composite
def digit_runs(draw: st.DrawFn) -> str:
    """Digit groups joined by nothing or by one space or hyphen: long runs, as in "4111-1111 11111"."""
    groups = draw(st.lists(st.text(alphabet="0123456789", min_size=1, max_size=6), min_size=1, max_size=8))
    joins = draw(st.lists(st.sampled_from(["", " ", "-"]), min_size=len(groups), max_size=len(groups)))
    return "".join(group + join for group, join in zip(groups, joins, strict=True))


# Text where runs start, end and touch each other in every way the masking has to get right.
digit_heavy_text = st.one_of(
    st.text(alphabet=st.sampled_from("0123456789 - -x\u0663\uff11\n"), max_size=80),
    st.lists(
        st.one_of(digit_runs(), st.sampled_from(["x", "  ", "--", " -", "- ", "\u0663", "\uff11", "\\"])),
        max_size=6,
    ).map("".join),
)


# --- mask_pans ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"card {VISA} ok", f"card {VISA_MASKED} ok"),
        ("4111 1111 1111 1111", VISA_MASKED),
        ("4111-1111-1111-1111", VISA_MASKED),
        ("amex 378282246310005.", "amex 378282*****0005."),
        ("unionpay=6212345678901265&x=1", "unionpay=621234******1265&x=1"),
        (f"pan:{VISA}77", "pan:411111********1177"),  # digits glued to a PAN: the whole run is masked
        ("".join(chr(0xFF10 + int(d)) for d in VISA), VISA_MASKED),  # full-width digits
        # 21-digit runs whose only Luhn-valid window is 19 digits (0..19), resp. 13 digits (1..14), long.
        ("515884453684993674932", "515884***********4932"),
        ("225788932258406214131", "225788***********4131"),
        ("not luhn 1234567890123", "not luhn 1234567890123"),
        ("twelve 411111111111", "twelve 411111111111"),
        ("0:001343 053789", "0:001343 053789"),  # 13 characters, but 12 digits, in the run
        ("double separators 4111  1111  1111  1111", "double separators 4111  1111  1111  1111"),
        ("", ""),
    ],
)
def test_mask_pans_examples(text: str, expected: str) -> None:
    assert mask_pans(text) == expected


def test_mask_pans_returns_the_same_object_when_nothing_is_masked() -> None:
    line = '127.0.0.1 [09/May/2026:07:35:25 +0000] "POST /v1/payments HTTP/1.1" 201 1432 12.345ms'
    assert mask_pans(line) is line


@given(st.one_of(st.text(), digit_heavy_text))
def test_mask_pans_agrees_with_reference(text: str) -> None:
    assert mask_pans(text) == reference_mask(text)


@given(st.one_of(st.text(), digit_heavy_text))
def test_mask_pans_leaves_text_without_long_digit_runs_unchanged(text: str) -> None:
    if longest_run(text) < 13:
        assert mask_pans(text) == text
    masked = mask_pans(text)
    assert mask_pans(masked) == masked  # idempotent: masked output holds no further PAN


@given(
    pan=pans(),
    prefix=st.one_of(st.text(), digit_heavy_text),
    suffix=st.one_of(st.text(), digit_heavy_text),
)
def test_mask_pans_hides_any_embedded_pan(pan: str, prefix: str, suffix: str) -> None:
    for form in (pan, grouped(pan, " "), grouped(pan, "-")):
        assert pan not in mask_pans(prefix + form + suffix)


# --- the rendered line never holds a PAN ------------------------------------------------------------------


def emit_in(place: str, text: str) -> Callable[[FilteringBoundLogger], object]:
    def emit(log: FilteringBoundLogger) -> None:
        if place == "message":
            log.info(text)
        elif place == "nested":
            log.info("payment.created", payment={"metadata": {"note": text}})
        elif place == "list":
            log.info("payment.created", notes=["a", text, (1, text)])
        elif place == "key":
            log.info("payment.created", metadata={text: "value"})
        elif place == "bytes":
            log.info("payment.created", body=text.encode("utf-8"))
        elif place == "exception":
            try:
                raise ValueError(text)
            except ValueError:
                log.exception("payment.failed")
        elif place == "stdlib":
            logging.getLogger("aiohttp.access").info("%s", text)
        elif place == "stdlib_exception":
            try:
                raise RuntimeError(text)
            except RuntimeError:
                logging.getLogger("asyncio").exception("task failed")
        else:
            raise AssertionError(place)

    return emit


def all_strings(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from all_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from all_strings(item)


_JSON_ESCAPE = re.compile(rb"\\u[0-9a-fA-F]{4}")


@given(
    pan=pans(),
    separator=st.sampled_from(["", " ", "-"]),
    prefix=st.one_of(st.text(), digit_heavy_text),
    suffix=st.one_of(st.text(), digit_heavy_text),
    place=st.sampled_from(
        ["message", "nested", "list", "key", "bytes", "exception", "stdlib", "stdlib_exception"]
    ),
)
def test_rendered_line_never_contains_the_pan(
    pan: str, separator: str, prefix: str, suffix: str, place: str
) -> None:
    form = grouped(pan, separator) if separator else pan
    lines = capture_raw(emit_in(place, prefix + form + suffix))
    assert len(lines) == 1
    line = lines[0]
    event = orjson.loads(line)
    for text in all_strings(event):
        assert pan not in text
        assert form not in text
    # Raw bytes too; "\u0002" style escapes are dropped first, their hex digits are not from the input.
    raw = _JSON_ESCAPE.sub(b"?", line)
    assert pan.encode() not in raw
    assert form.encode() not in raw
    if place in {"exception", "stdlib_exception"}:
        assert "Traceback (most recent call last)" in event["exception"]


# --- sensitive keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "pan",
        "number",
        "cvc",
        "CVV",
        "cvv2",
        "cardNumber",
        "card-number",
        "security_code",
        "otp",
        "otp_code",
        "password",
        "db_password",
        "client_secret",
        "webhookSecret",
        "signing_secret",
        "private_key",
        "hmac_key",
        "kek",
        "dek",
        "Authorization",
        "Cookie",
        "Set-Cookie",
        "x-api-key",
        "device_signature",
        "payment_method.card.number",
    ],
)
def test_sensitive_keys_are_redacted(key: str) -> None:
    [event] = capture(lambda log: log.info("x", **{key: "s3cr3t-4111111111111111"}))
    assert event[key] == "[REDACTED]"


@pytest.mark.parametrize(
    "key",
    ["idempotency_key", "Idempotency-Key", "device_public_key", "token", "key_id", "last4", "account_number"],
)
def test_non_secret_keys_are_kept(key: str) -> None:
    [event] = capture(lambda log: log.info("x", **{key: "value-1"}))
    assert event[key] == "value-1"


def test_sensitive_keys_are_redacted_at_any_depth_without_touching_the_callers_objects() -> None:
    payload = {
        "payment_method": {"card": {"cvc": "123", "number": VISA, "exp_month": 12, "brand": "visa"}},
        "attempts": [{"otp": "123456", "ok": False}, ({"password": "hunter2"},)],
        "idempotency_key": "idem-1",
        "note": f"card {VISA}",
    }
    snapshot = json.loads(json.dumps(payload))
    [event] = capture(lambda log: log.info("payment.created", request=payload))
    assert event["request"] == {
        "payment_method": {
            "card": {"cvc": "[REDACTED]", "number": "[REDACTED]", "exp_month": 12, "brand": "visa"}
        },
        "attempts": [{"otp": "[REDACTED]", "ok": False}, [{"password": "[REDACTED]"}]],
        "idempotency_key": "idem-1",
        "note": f"card {VISA_MASKED}",
    }
    assert json.loads(json.dumps(payload)) == snapshot


def test_header_pairs_and_mappings_are_redacted() -> None:
    headers = [(b"Authorization", b"Bearer abc"), (b"Content-Type", b"application/json")]
    [event] = capture(lambda log: log.info("x", headers=headers))
    assert event["headers"] == [["Authorization", "[REDACTED]"], ["Content-Type", "application/json"]]


def test_integers_floats_and_objects_are_masked() -> None:
    @dataclasses.dataclass
    class Card:
        number: str
        note: str

    class Method(msgspec.Struct):
        cvc: str
        last4: str

    [event] = capture(
        lambda log: log.info(
            "x",
            as_int=int(VISA),
            as_float=float(VISA),
            not_luhn=1234567890123,
            small=411111,
            card=Card(VISA, f"n {VISA}"),
            method=Method("123", "1111"),
            error=ValueError(f"declined {VISA}"),
            tags={VISA},
        )
    )
    assert event["as_int"] == VISA_MASKED
    assert event["as_float"] == VISA_MASKED
    assert event["not_luhn"] == 1234567890123
    assert event["small"] == 411111
    assert event["card"] == {"number": "[REDACTED]", "note": f"n {VISA_MASKED}"}
    assert event["method"] == {"cvc": "[REDACTED]", "last4": "1111"}
    assert event["error"] == f"ValueError('declined {VISA_MASKED}')"
    assert event["tags"] == [VISA_MASKED]


def test_awkward_values_still_give_one_json_line() -> None:
    cyclic: list[object] = [1]
    cyclic.append(cyclic)
    lines = capture_raw(
        lambda log: log.info("x", cyclic=cyclic, huge=2**70 + 1, surrogate=f"\udcff {VISA}", keys={(1, 2): 3})
    )
    assert len(lines) == 1
    event = json.loads(lines[0])  # the stdlib parser accepts the escaped lone surrogate
    assert event["cyclic"] == [1, "[CYCLE]"]
    assert event["surrogate"] == f"\udcff {VISA_MASKED}"
    assert event["keys"] == {"(1, 2)": 3}
    assert isinstance(event["huge"], str)


# --- configuration ------------------------------------------------------------------------------------------


def test_lines_are_json_with_level_timestamp_logger_and_contextvars() -> None:
    with structlog.contextvars.bound_contextvars(request_id="req_abc"):
        [event] = capture(lambda log: log.info("http.request", status=201))
    assert event["event"] == "http.request"
    assert event["request_id"] == "req_abc"
    assert event["level"] == "info"
    assert event["logger"] == "test"
    assert event["status"] == 201
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", event["ts"])


def test_stdlib_records_come_out_as_redacted_json_with_context() -> None:
    with structlog.contextvars.bound_contextvars(request_id="req_std"):
        [event] = capture(lambda _: logging.getLogger("aiohttp.access").info(f"card {VISA}"))
    assert event["event"] == f"card {VISA_MASKED}"
    assert event["logger"] == "aiohttp.access"
    assert event["level"] == "info"
    assert event["request_id"] == "req_std"


def test_a_broken_stdlib_record_does_not_print_its_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    record = logging.makeLogRecord(
        {
            "name": "payhub.test",
            "msg": "card %d",
            "args": (VISA,),
            "levelno": logging.INFO,
            "levelname": "INFO",
        }
    )
    [handler] = [h for h in logging.getLogger().handlers if isinstance(h, RedactingJsonHandler)]
    # Straight to our handler: pytest's own capture handler on the root logger re-raises formatting errors.
    [event] = capture(lambda _: handler.handle(record))
    assert event == {
        "event": "logging_error",
        "level": "error",
        "logger": "payhub.test",
        "error": "TypeError",
    }
    out, err = capsys.readouterr()
    assert VISA not in out
    assert VISA not in err


def test_level_filters_both_structlog_and_stdlib() -> None:
    def emit(log: FilteringBoundLogger) -> None:
        log.info("dropped")
        logging.getLogger("aiohttp.server").info("dropped too")
        log.warning("kept")
        logging.getLogger("aiohttp.server").error("kept too")

    assert [e["event"] for e in capture(emit, level="warning")] == ["kept", "kept too"]


def test_unknown_level_is_rejected() -> None:
    with pytest.raises(ValueError, match="verbose"):
        configure_logging("verbose")


def test_configuring_twice_redirects_cached_loggers_and_keeps_one_handler() -> None:
    first, second = io.BytesIO(), io.BytesIO()
    configure_logging("info", stream=first)
    log = get_logger("cached")
    log.info("one")
    configure_logging("info", stream=second)
    log.info("two")
    logging.getLogger("aiohttp.access").info("three")
    assert [orjson.loads(x)["event"] for x in first.getvalue().splitlines()] == ["one"]
    assert [orjson.loads(x)["event"] for x in second.getvalue().splitlines()] == ["two", "three"]
    assert sum(isinstance(h, RedactingJsonHandler) for h in logging.getLogger().handlers) == 1


def test_text_streams_and_stdout_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    text = io.StringIO()
    configure_logging("info", stream=text)
    get_logger("t").info("to text", pan=VISA)
    assert orjson.loads(text.getvalue())["pan"] == "[REDACTED]"

    configure_logging("info")  # default: whatever sys.stdout is when writing
    get_logger("t").info("to stdout", note=VISA)
    sys.stdout.flush()
    assert orjson.loads(capsys.readouterr().out)["note"] == VISA_MASKED


# --- audit --------------------------------------------------------------------------------------------------


def test_audit_line_shape() -> None:
    with structlog.contextvars.bound_contextvars(request_id="req_aud"):
        [event] = capture(
            lambda _: audit(
                "payment.refund",
                actor="spiffe://payhub.local/tenant/acme/role/client",
                outcome="success",
                source="198.51.100.7",
                object_id="pay_123",
                tenant="acme",
                amount=500,
                card=VISA,
                otp="123456",
            ),
            level="error",  # audit lines are never filtered out by level
        )
    assert event.pop("ts")
    assert event == {
        "event": "audit",
        "audit": True,
        "action": "payment.refund",
        "actor": "spiffe://payhub.local/tenant/acme/role/client",
        "tenant": "acme",
        "outcome": "success",
        "source": "198.51.100.7",
        "object": "pay_123",
        "amount": 500,
        "card": VISA_MASKED,
        "otp": "[REDACTED]",
        "request_id": "req_aud",
        "level": "info",
        "logger": "audit",
    }


def test_audit_rejects_reserved_field_names() -> None:
    with pytest.raises(TypeError, match="object"):
        audit("x", actor="a", outcome="success", object="pay_1")
