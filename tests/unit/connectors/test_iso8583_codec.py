"""The precompiled ISO 8583 codec of the card link against pyiso8583, its reference.

For random messages of the link's fixed field set the codec must pack byte for byte what pyiso8583
packs (with the same side effects on the message: the bitmaps it writes into it) and unpack to the
same dict. For anything else it must decline (None, message untouched), so that pyiso8583 handles it:
``pack``/``unpack`` then give pyiso8583's result, or its error as WireError.
"""

from __future__ import annotations

from typing import Any

import iso8583
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from iso8583.specs import default_ascii

from connectors.iso8583_card import transformers as wire
from connectors.iso8583_card.codec import FixedFieldCodec

ASCII = st.characters(min_codepoint=0, max_codepoint=127)
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
FIELDS = sorted(wire.CODEC_FIELDS)
MANY = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def value_for(number: int, alphabet: st.SearchStrategy[str] = ASCII) -> st.SearchStrategy[str]:
    spec = wire.SPEC[str(number)]
    if spec["len_type"] == 0:
        return st.text(alphabet, min_size=spec["max_len"], max_size=spec["max_len"])
    return st.text(alphabet, max_size=spec["max_len"])


@st.composite
def messages(draw: st.DrawFn, alphabet: st.SearchStrategy[str] = ASCII) -> dict[str, str]:
    """A message of the fixed field set, in random key order, sometimes with stale bitmaps."""
    numbers = draw(st.lists(st.sampled_from(FIELDS), unique=True))
    fields = {str(number): draw(value_for(number, alphabet)) for number in numbers}
    if draw(st.booleans()):  # pyiso8583 recomputes both bitmaps: stale ones must not matter
        fields["p"] = draw(st.text(ASCII, max_size=20))
    if draw(st.booleans()):
        fields["1"] = draw(st.text(ASCII, max_size=20))
    fields["t"] = draw(st.text(alphabet, min_size=4, max_size=4))
    keys = draw(st.permutations(list(fields)))
    return {key: fields[key] for key in keys}


def reference_pack(message: dict[str, Any]) -> bytes:
    raw, _ = iso8583.encode(message, wire.SPEC)
    return bytes(raw)


def reference_unpack(raw: bytes) -> dict[str, str]:
    decoded, _ = iso8583.decode(raw, wire.SPEC)
    return decoded


# ---- messages of the field set: the codec answers, and answers what pyiso8583 does -------------------


@MANY
@given(messages())
@example({"t": "0800", "7": "0601093015", "11": "000001", "70": "301"})  # echo: secondary bitmap only
@example({"t": "0210", "39": "00"})
@example({"t": "0200", "1": "stale", "2": "", "48": ""})  # empty LLVAR/LLLVAR fields
def test_pack_is_byte_for_byte_pyiso8583(message: dict[str, str]) -> None:
    ours, reference = dict(message), dict(message)
    raw = wire.CODEC.encode(ours)
    assert raw is not None
    assert raw == reference_pack(reference)
    assert list(ours.items()) == list(reference.items())  # "p" and "1" set (or dropped) the same way


@MANY
@given(messages())
def test_unpack_is_pyiso8583(message: dict[str, str]) -> None:
    raw = reference_pack(message)
    decoded = wire.CODEC.decode(raw)
    assert decoded is not None
    assert list(decoded.items()) == list(reference_unpack(raw).items())
    assert wire.unpack(raw) == decoded


@MANY
@given(messages(PRINTABLE), st.booleans())
def test_framed_round_trip(message: dict[str, str], lowercase_bitmap: bool) -> None:
    framed = wire.pack(dict(message))
    assert wire.frame_length(framed[:2]) == len(framed) - 2
    payload = framed[2:]
    if lowercase_bitmap:  # pyiso8583 reads hex bitmaps in either case and keeps the text as sent
        payload = payload[:4] + payload[4:20].lower() + payload[20:]
    decoded = wire.unpack(payload)
    assert decoded == reference_unpack(payload)
    assert {k: v for k, v in decoded.items() if k not in ("p", "1")} == {
        k: v for k, v in message.items() if k not in ("p", "1")
    }


# ---- anything else: the codec declines, pack/unpack fall back to pyiso8583 ---------------------------

ANY_FIELD = st.integers(min_value=2, max_value=128).filter(lambda n: n != 65).map(str)
ODD_KEYS = st.sampled_from(["h", "65", "0", "129", "x", "", "٣", "02"])


@st.composite
def odd_messages(draw: st.DrawFn) -> dict[Any, Any]:
    """Messages near the field set: wrong lengths, non-ASCII text, other fields, non-str values."""
    message: dict[Any, Any] = draw(messages())
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        change = draw(st.sampled_from(["length", "unicode", "field", "key", "type", "drop_t"]))
        data_keys = [k for k in message if k not in ("p", "1")]
        if change == "length" and data_keys:
            message[draw(st.sampled_from(data_keys))] = draw(st.text(ASCII, max_size=40))
        elif change == "unicode" and data_keys:
            key = draw(st.sampled_from(data_keys))
            value = str(message[key])
            if value:
                at = draw(st.integers(min_value=0, max_value=len(value) - 1))
                message[key] = value[:at] + draw(st.sampled_from("éü€\u0663")) + value[at + 1 :]
        elif change == "field":
            number = draw(ANY_FIELD)
            spec = wire.SPEC.get(number, default_ascii.get(number))
            size = spec["max_len"] if spec and spec["len_type"] == 0 else draw(st.integers(0, 30))
            message[number] = draw(st.text(ASCII, min_size=size, max_size=size))
        elif change == "key":
            message[draw(ODD_KEYS)] = draw(st.text(ASCII, max_size=6))
        elif change == "type" and message:
            key = draw(st.sampled_from(list(message)))
            message[key] = draw(st.sampled_from([12, None, b"0200", 1.5]))
        elif change == "drop_t":
            message.pop("t", None)
    return message


@MANY
@given(odd_messages())
def test_outside_the_field_set_the_codec_declines_or_agrees(message: dict[Any, Any]) -> None:
    ours, reference = dict(message), dict(message)
    raw = wire.CODEC.encode(ours)
    if raw is None:
        assert ours == message  # untouched: pyiso8583 gets the message as it was
    else:
        assert raw == reference_pack(reference)
        assert ours == reference


def error_of(call: Any) -> type[BaseException] | None:
    try:
        call()
    except Exception as exc:
        return type(exc)
    return None


@MANY
@given(odd_messages())
def test_pack_gives_pyiso8583_result_or_its_error(message: dict[Any, Any]) -> None:
    """As before the codec: pyiso8583's bytes, its EncodeError as WireError, any other error as is."""
    ours, reference = dict(message), dict(message)
    expected = error_of(lambda: reference_pack(dict(message)))
    if expected is None:
        assert wire.pack(ours)[2:] == reference_pack(reference)
        assert ours == reference
    else:
        raised = error_of(lambda: wire.pack(ours))
        assert raised is (wire.WireError if issubclass(expected, iso8583.EncodeError) else expected)


@st.composite
def damaged_payloads(draw: st.DrawFn) -> bytes:
    """Encodings of the field set, cut short, extended, or with bytes overwritten."""
    raw = bytearray(reference_pack(draw(messages())))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        change = draw(st.sampled_from(["cut", "append", "overwrite", "bitmap"]))
        if change == "cut" and raw:
            del raw[draw(st.integers(min_value=0, max_value=len(raw) - 1)) :]
        elif change == "append":
            raw += draw(st.binary(min_size=1, max_size=8))
        elif change == "overwrite" and raw:
            at = draw(st.integers(min_value=0, max_value=len(raw) - 1))
            raw[at] = draw(st.sampled_from([*b"0123456789ABCDEFaf +-_", 0x80, 0xFF, 0]))
        elif change == "bitmap" and len(raw) >= 20:
            at = draw(st.integers(min_value=4, max_value=19))
            raw[at] = draw(st.sampled_from(b"0123456789ABCDEFabcdef g"))
    return bytes(raw)


@MANY
@given(st.one_of(damaged_payloads(), st.binary(max_size=80)))
def test_damaged_input_the_codec_declines_or_agrees(payload: bytes) -> None:
    try:
        expected: dict[str, str] | None = reference_unpack(payload)
    except iso8583.DecodeError:
        expected = None
    decoded = wire.CODEC.decode(payload)
    if decoded is not None:
        assert expected is not None
        assert list(decoded.items()) == list(expected.items())
    if expected is None:
        with pytest.raises(wire.WireError):
            wire.unpack(payload)
    else:
        assert wire.unpack(payload) == expected


def test_a_field_outside_the_set_goes_through_pyiso8583() -> None:
    message = {"t": "0200", "3": "000000", "22": "051"}  # 22: POS entry mode, not a field of the link
    assert wire.CODEC.encode(dict(message)) is None
    packed = wire.pack(dict(message))
    assert packed[2:] == reference_pack(dict(message))
    assert wire.CODEC.decode(packed[2:]) is None
    assert wire.unpack(packed[2:]) == reference_unpack(packed[2:])


def test_the_codec_compiles_only_what_it_can_reproduce() -> None:
    assert wire.CODEC.fields == wire.CODEC_FIELDS
    binary = {**wire.SPEC, "52": {**wire.SPEC["52"], "data_enc": "b"}}
    with pytest.raises(ValueError, match="52"):
        FixedFieldCodec(binary, [52])
    nibbles = {**wire.SPEC, "2": {**wire.SPEC["2"], "len_count": "nibbles"}}
    with pytest.raises(ValueError, match="field 2"):
        FixedFieldCodec(nibbles, [2])
    headed = {**wire.SPEC, "h": {**wire.SPEC["h"], "max_len": 6}}
    with pytest.raises(ValueError, match="header"):
        FixedFieldCodec(headed, [2])
    with pytest.raises(ValueError, match="65"):
        FixedFieldCodec(wire.SPEC, [65])
