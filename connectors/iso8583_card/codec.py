"""A precompiled ISO 8583 codec for the acquirer link's fixed field set; pyiso8583 stays the reference.

pyiso8583 interprets its spec field by field on every message (about 50 µs to pack an authorization
and unpack its answer). The link only ever uses ASCII fields from a small fixed set, so this codec is
compiled once, at import, from the *same* spec entries for exactly those fields: a table of
(field, bitmap bit, length-prefix width, maximum length), then one pass per message with str
operations and one ``encode``/``decode`` of the whole message.

It is exact or it declines: ``encode``/``decode`` return None for anything outside what was compiled
(a field outside the set, a non-str value, a wrong length, non-ASCII data, a malformed bitmap or
length prefix, trailing bytes, ...), and the caller then runs pyiso8583, which produces the same
result or raises its own error. Where the codec answers, it answers byte for byte (pack) and key for
key (unpack) what pyiso8583 does, including pyiso8583's side effects on the message being packed
(``"p"`` set to the primary bitmap, ``"1"`` to the secondary one or removed); the unit tests check
this on random messages of the field set (tests/unit/connectors/test_iso8583_codec.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

_HEX: Final = "0123456789ABCDEFabcdef"


def _bit(field: int) -> int:
    """Field 1..128 → its bit in a 128-bit mask laid out as the primary then the secondary bitmap."""
    return 1 << (128 - field)


_SECONDARY: Final = _bit(1)  # field 1 of the primary bitmap: a secondary bitmap follows
_FIELDS_65_128: Final = (1 << 64) - 1


def _text_spec(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    entry: Mapping[str, Any] = spec[key]
    if entry["data_enc"] != "ascii" or entry.get("len_count", "bytes") != "bytes":
        raise ValueError(f"field {key}: only ASCII data counted in bytes can be precompiled")
    return entry


class FixedFieldCodec:
    """Encode/decode messages whose fields are all in ``fields`` (numbers 2..128), per ``spec``."""

    def __init__(self, spec: Mapping[str, Mapping[str, Any]], fields: Iterable[int]) -> None:
        if spec["h"]["max_len"] > 0:
            raise ValueError("a message header cannot be precompiled")
        for key, width in (("t", 4), ("p", 16), ("1", 16)):
            entry = _text_spec(spec, key)
            if entry["len_type"] != 0 or entry["max_len"] != width:
                raise ValueError(f"field {key}: expected {width} fixed ASCII characters")
        table: list[tuple[str, int, int, int]] = []
        for number in sorted(set(fields)):
            if not 2 <= number <= 128 or number == 65:
                raise ValueError(f"field {number}: only fields 2..128 other than 65 can be precompiled")
            key = str(number)
            entry = _text_spec(spec, key)
            len_type, max_len = entry["len_type"], entry["max_len"]
            if len_type not in (0, 1, 2, 3, 4) or (len_type and entry["len_enc"] != "ascii"):
                raise ValueError(f"field {key}: only fixed or ASCII-length-prefixed fields")
            if len_type and max_len >= 10**len_type:
                raise ValueError(f"field {key}: max_len does not fit its length prefix")
            table.append((key, _bit(number), len_type, max_len))
        self._table: Final = tuple(table)
        self._bits: Final[dict[object, int]] = {key: bit for key, bit, _, _ in table}
        self._allowed: Final = sum(bit for _, bit, _, _ in table) | _SECONDARY
        # Keys pyiso8583 ignores or recomputes when encoding.
        for key in ("t", "p", "1"):
            self._bits[key] = 0

    @property
    def fields(self) -> frozenset[int]:
        return frozenset(int(key) for key, _, _, _ in self._table)

    def encode(self, message: dict[str, str]) -> bytes | None:
        """The encoded message (no length prefix), updating ``"p"``/``"1"`` as pyiso8583 does; None
        when the message is not one this codec was compiled for (``message`` is then untouched)."""
        bits = 0
        lookup = self._bits
        for key in message:
            bit = lookup.get(key)
            if bit is None:
                return None
            bits |= bit
        mti = message.get("t")
        if type(mti) is not str or len(mti) != 4:
            return None
        if bits & _FIELDS_65_128:
            bits |= _SECONDARY
        bitmaps = f"{bits:032X}"
        pieces = [mti, bitmaps if bits & _SECONDARY else bitmaps[:16]]
        if not self._encode_fields(message, bits, pieces):
            return None
        try:
            raw = "".join(pieces).encode("ascii")
        except UnicodeEncodeError:
            return None
        # pyiso8583's side effects, in its order: "1" dropped, "p" set, "1" set again when needed.
        message.pop("1", None)
        message["p"] = bitmaps[:16]
        if bits & _SECONDARY:
            message["1"] = bitmaps[16:]
        return raw

    def _encode_fields(self, message: dict[str, str], bits: int, pieces: list[str]) -> bool:
        for key, bit, len_type, max_len in self._table:
            if not bits & bit:
                continue
            value = message[key]
            if type(value) is not str:
                return False
            if len_type == 0:
                if len(value) != max_len:
                    return False
            elif len(value) > max_len:
                return False
            else:
                pieces.append(f"{len(value):0{len_type}d}")
            pieces.append(value)
        return True

    def decode(self, payload: bytes | bytearray) -> dict[str, str] | None:
        """The decoded message, equal to pyiso8583's; None when it is not one this codec handles
        (malformed or not of the field set: pyiso8583 then decodes it or names the error)."""
        try:
            text = payload.decode("ascii")
        except UnicodeDecodeError:
            return None
        primary = text[4:20]
        if len(primary) != 16 or primary.strip(_HEX):
            return None
        bits = int(primary, 16) << 64
        message = {"t": text[:4], "p": primary}
        index = 20
        if bits & _SECONDARY:
            secondary = text[20:36]
            if len(secondary) != 16 or secondary.strip(_HEX):
                return None
            bits |= int(secondary, 16)
            message["1"] = secondary
            index = 36
        if bits & ~self._allowed or not self._decode_fields(text, index, bits, message):
            return None
        return message

    def _decode_fields(self, text: str, index: int, bits: int, message: dict[str, str]) -> bool:
        for key, bit, len_type, max_len in self._table:
            if not bits & bit:
                continue
            length = max_len
            if len_type:
                prefix = text[index : index + len_type]
                if len(prefix) != len_type or not prefix.isdigit() or int(prefix) > max_len:
                    return False
                length = int(prefix)
                index += len_type
            end = index + length
            if end > len(text):
                return False
            message[key] = text[index:end]
            index = end
        return index == len(text)
