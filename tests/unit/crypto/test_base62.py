"""crypto.base62 and the ids made of it (gateway.ids.new_id, crypto.vault.new_token_id): format, one CSPRNG
call, rejection of the biased bytes, uniform characters, ids in creation order."""

from __future__ import annotations

import collections
import re
import string

import pytest

from crypto import base62
from crypto.base62 import ALPHABET, random_base62
from crypto.vault import new_token_id
from gateway.ids import new_id


def test_formats() -> None:
    made = {new_id("pay") for _ in range(2000)}
    assert len(made) == 2000
    assert all(re.fullmatch(r"pay_[A-Za-z0-9]{24}", made_id) for made_id in made)
    assert re.fullmatch(r"tok_[A-Za-z0-9]{24}", new_token_id())
    assert string.ascii_letters + string.digits == ALPHABET
    assert len(random_base62(7)) == 7


def test_one_csprng_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = base62.secrets.token_bytes

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    monkeypatch.setattr(base62.secrets, "token_bytes", counting)
    new_id("pay")
    new_token_id()
    assert calls == [23, 32]  # 15 and 24 characters, 8 bytes to spare


def test_bytes_map_evenly_and_rejected_bytes_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter(
        [
            bytes([248, 255] * 5) + bytes(range(22)),  # 32 bytes, only 22 usable: not enough, draw again
            bytes(range(248, 256)) + bytes([0, 61, 62, 123, 124, 185, 186, 247] * 3),
        ]
    )
    monkeypatch.setattr(base62.secrets, "token_bytes", lambda n: next(draws))
    # 0, 62, 124 and 186 are all "a"; 61, 123, 185 and 247 all "9": byte % 62 over 4 x 62 values.
    assert random_base62(24) == "a9a9a9a9" * 3


def test_characters_are_uniform() -> None:
    """Chi-square over 62 symbols (61 degrees of freedom): 99.99% quantile ≈ 116."""
    counts = collections.Counter("".join(random_base62(24) for _ in range(4000)))
    assert set(counts) <= set(ALPHABET)
    expected = 96_000 / 62
    chi2 = sum((counts.get(ch, 0) - expected) ** 2 / expected for ch in ALPHABET)
    assert chi2 < 116


def test_ids_sort_by_creation_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zero-padded base 36 (0-9 a-z): string order is time order, in the C collation and in locales."""
    from gateway import ids

    moments = [0, 35, 36, 1_765_000_000_000, 1_765_000_000_001, 36**9 - 1]
    made = []
    for ms in moments:
        monkeypatch.setattr(ids.time, "time_ns", lambda ms=ms: ms * 1_000_000)
        made.append(new_id("pay"))
    assert made == sorted(made)
    assert [m[4:13] for m in made[:3]] == ["000000000", "00000000z", "000000010"]
    assert all(re.fullmatch(r"pay_[0-9a-z]{9}[A-Za-z0-9]{15}", m) for m in made)
