from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.audit_chain import (
    GENESIS_HASH,
    AuditRecord,
    SealKeyError,
    checkpoint_message,
    link,
    load_seal_key,
)

AT = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)


def record(**overrides: object) -> AuditRecord:
    base: dict[str, object] = {
        "seq": 1,
        "at": AT,
        "actor": "acme",
        "action": "card.tokenized",
        "outcome": "success",
        "tenant": "acme",
        "object": "tok_1",
        "details": {"brand": "visa", "last4": "1111"},
    }
    base.update(overrides)
    return AuditRecord(**base)  # type: ignore[arg-type]


def test_canonical_encoding_is_stable_across_timezones_and_key_order() -> None:
    same_instant = AT.astimezone(tz=UTC).astimezone(tz=None)
    a = record(details={"a": 1, "b": 2})
    b = record(at=same_instant, details={"b": 2, "a": 1})
    assert a.canonical() == b.canonical()


@given(
    field=st.sampled_from(["seq", "actor", "action", "outcome", "tenant", "object", "details", "at"]),
    data=st.data(),
)
def test_any_field_change_changes_the_link(field: str, data: st.DataObject) -> None:
    original = record()
    values: dict[str, st.SearchStrategy[object]] = {
        "seq": st.integers(min_value=2, max_value=2**63 - 1),
        "actor": st.text().filter(lambda v: v != "acme"),
        "action": st.text().filter(lambda v: v != "card.tokenized"),
        "outcome": st.text().filter(lambda v: v != "success"),
        "tenant": st.none() | st.text().filter(lambda v: v != "acme"),
        "object": st.none() | st.text().filter(lambda v: v != "tok_1"),
        "details": st.dictionaries(st.text(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "at": st.integers(min_value=1, max_value=10**9).map(lambda us: AT + timedelta(microseconds=us)),
    }
    changed = record(**{field: data.draw(values[field])})
    assert link(GENESIS_HASH, changed) != link(GENESIS_HASH, original)


@given(st.binary(min_size=32, max_size=32))
def test_link_depends_on_the_previous_hash(prev: bytes) -> None:
    if prev != GENESIS_HASH:
        assert link(prev, record()) != link(GENESIS_HASH, record())


def test_seal_key_is_created_private_and_reused(tmp_path: Path) -> None:
    key = load_seal_key(tmp_path / "keys")
    path = tmp_path / "keys" / "audit_seal.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = load_seal_key(tmp_path / "keys")
    assert again.key_id == key.key_id
    message = checkpoint_message(7, b"\x01" * 32, 99)
    signature = key.sign(message)
    assert again.verify(message, signature)
    assert not again.verify(checkpoint_message(7, b"\x01" * 32, 100), signature)
    assert "PRIVATE" not in repr(key)


def test_seal_key_refusals(tmp_path: Path) -> None:
    with pytest.raises(SealKeyError, match="not found"):
        load_seal_key(tmp_path / "none", create=False)
    load_seal_key(tmp_path)
    (tmp_path / "audit_seal.key").chmod(0o644)
    with pytest.raises(SealKeyError, match="chmod 600"):
        load_seal_key(tmp_path)
