"""Random base62 text (``A-Z a-z 0-9``) from one CSPRNG call: object ids and vault token ids.

Each character is uniform and independent: 24 characters carry 24 x log2(62) ≈ 142.9 random bits,
unguessable, so ids made of them are safe to show (every lookup is still scoped to its tenant).

One ``secrets.token_bytes`` call per string, turned into characters by one C-level ``bytes.translate``:
bytes 0..247 map to ``ALPHABET[byte % 62]`` (248 = 4 x 62, so each character comes from exactly four
byte values) and bytes 248..255 are dropped (rejection sampling, no modulo bias). A draw of ``length
+ 8`` bytes keeps ``length`` or more almost always (for 24: 1 - 1e-6); otherwise it draws again.
"""

from __future__ import annotations

import secrets
import string
from typing import Final

ALPHABET: Final = string.ascii_letters + string.digits

_ACCEPTED: Final = 4 * len(ALPHABET)  # 248: bytes below it map evenly onto the alphabet
_TO_CHAR: Final = bytes(ord(ALPHABET[b % len(ALPHABET)]) if b < _ACCEPTED else 0 for b in range(256))
_REJECTED: Final = bytes(range(_ACCEPTED, 256))


def random_base62(length: int) -> str:
    """``length`` uniform base62 characters."""
    while True:
        chars = secrets.token_bytes(length + 8).translate(_TO_CHAR, _REJECTED)
        if len(chars) >= length:
            return chars[:length].decode("ascii")
