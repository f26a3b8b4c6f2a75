"""Keyring: KEK wrap/unwrap, tamper detection, context binding, load_kek file/env rules, lookups."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import threading
import traceback
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.keyring import (
    DataKey,
    KeyEncryptionKey,
    Keyring,
    KeyringError,
    LocalKek,
    generate_data_key,
    load_kek,
    unwrap_data_key,
    wrap_context,
    wrap_data_key,
)

KEK = LocalKek(bytes(range(32)))
OTHER_KEK = LocalKek(bytes(range(1, 33)))
keys32 = st.binary(min_size=32, max_size=32)


@given(key=keys32, context=st.binary(max_size=64))
def test_wrap_round_trip(key: bytes, context: bytes) -> None:
    wrapped = KEK.wrap(key, context=context)
    assert key not in wrapped
    assert len(wrapped) == 12 + 32 + 16
    assert KEK.unwrap(wrapped, context=context) == key


@given(key=keys32, data=st.data())
def test_tampering_any_byte_is_detected(key: bytes, data: st.DataObject) -> None:
    wrapped = bytearray(KEK.wrap(key, context=b"ctx"))
    index = data.draw(st.integers(0, len(wrapped) - 1))
    wrapped[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(KeyringError, match="cannot unwrap"):
        KEK.unwrap(bytes(wrapped), context=b"ctx")


@given(key=keys32, context=st.binary(max_size=32), other=st.binary(max_size=32))
def test_wrong_context_fails(key: bytes, context: bytes, other: bytes) -> None:
    wrapped = KEK.wrap(key, context=context)
    if other != context:
        with pytest.raises(KeyringError):
            KEK.unwrap(wrapped, context=other)


def test_wrong_kek_and_truncated_input_fail() -> None:
    wrapped = KEK.wrap(b"k" * 32, context=b"c")
    with pytest.raises(KeyringError, match=OTHER_KEK.kek_id):
        OTHER_KEK.unwrap(wrapped, context=b"c")
    with pytest.raises(KeyringError, match="too short"):
        KEK.unwrap(wrapped[:27], context=b"c")


def test_wrap_uses_fresh_nonces() -> None:
    assert KEK.wrap(b"k" * 32, context=b"c") != KEK.wrap(b"k" * 32, context=b"c")


def test_kek_id_and_repr_do_not_reveal_the_key() -> None:
    key = os.urandom(32)
    kek = LocalKek(key)
    assert kek.kek_id == hashlib.sha256(key).hexdigest()[:16]
    assert key.hex() not in repr(kek)
    assert repr(kek) == f"LocalKek(kek_id={kek.kek_id!r})"
    assert isinstance(kek, KeyEncryptionKey)
    with pytest.raises(KeyringError, match="32 bytes"):
        LocalKek(b"short")


def test_data_key_context_binds_kid_and_purpose() -> None:
    assert wrap_context(3, "pan") == b"payhub-dek:v1:pan:3"
    key = generate_data_key(3, "pan")
    wrapped = wrap_data_key(KEK, key)
    assert unwrap_data_key(KEK, kid=3, purpose="pan", wrapped=wrapped) == key
    with pytest.raises(KeyringError):
        unwrap_data_key(KEK, kid=4, purpose="pan", wrapped=wrapped)  # moved to another row
    with pytest.raises(KeyringError):
        unwrap_data_key(KEK, kid=3, purpose="fingerprint", wrapped=wrapped)  # relabelled


class FakeKms:
    """Anything with kek_id/wrap/unwrap plugs in (here: a reversible toy standing in for a KMS)."""

    kek_id = "kms:test"

    def wrap(self, plaintext_key: bytes, *, context: bytes) -> bytes:
        return context + b"|" + plaintext_key[::-1]

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        prefix, _, body = wrapped.partition(b"|")  # contexts contain no "|"; keys may
        if prefix != context:
            raise KeyringError("context mismatch")
        return body[::-1]


def test_a_kms_can_be_plugged_in() -> None:
    kms: KeyEncryptionKey = FakeKms()
    key = generate_data_key(1, "fingerprint")
    assert unwrap_data_key(kms, kid=1, purpose="fingerprint", wrapped=wrap_data_key(kms, key)) == key


def test_data_key_repr_hides_key_bytes() -> None:
    key = generate_data_key(7, "pan")
    for text in (repr(key), str(key), repr([key]), repr(Keyring([key]))):
        assert key.key.hex() not in text
        assert repr(key.key) not in text
    assert repr(key) == "DataKey(kid=7, purpose='pan')"
    with pytest.raises(KeyringError):
        DataKey(1, "pan", b"short")
    with pytest.raises(KeyringError):
        DataKey(1, "cvv", b"x" * 32)  # type: ignore[arg-type]


def test_keyring_lookups() -> None:
    keys = [generate_data_key(1, "pan"), generate_data_key(2, "fingerprint"), generate_data_key(3, "pan")]
    ring = Keyring(keys)
    assert ring.current("pan") is keys[2]
    assert ring.current("fingerprint") is keys[1]
    assert ring.get(1) is keys[0]
    assert ring.get(1, "pan") is keys[0]
    assert ring.kids == [1, 2, 3]
    assert 3 in ring
    assert 4 not in ring
    assert len(ring) == 3
    with pytest.raises(KeyringError, match="unknown data key kid 4"):
        ring.get(4)
    with pytest.raises(KeyringError, match="fingerprint key, not a pan key"):
        ring.get(2, "pan")
    with pytest.raises(KeyringError, match="no fingerprint data key"):
        Keyring([keys[0]]).current("fingerprint")
    with pytest.raises(KeyringError, match="duplicate"):
        Keyring([keys[0], generate_data_key(1, "pan")])


# --- load_kek -----------------------------------------------------------------------------------


def test_load_kek_creates_a_private_file_then_reuses_it(tmp_path: Path) -> None:
    keys_dir = tmp_path / "var" / "keys"
    old_umask = os.umask(0)  # the modes must not depend on the umask being strict
    try:
        first = load_kek(keys_dir, {})
    finally:
        os.umask(old_umask)
    path = keys_dir / "kek"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys_dir.stat().st_mode) == 0o700
    assert len(path.read_bytes()) == 32
    assert first.kek_id == LocalKek(path.read_bytes()).kek_id
    assert load_kek(keys_dir, {}).kek_id == first.kek_id
    assert [p.name for p in keys_dir.iterdir()] == ["kek"]  # no temp file left behind


def test_concurrent_first_runs_agree_on_one_kek(tmp_path: Path) -> None:
    ids: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        ids.append(load_kek(tmp_path / "keys", {}).kek_id)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == 8
    assert len(set(ids)) == 1
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["kek"]


def test_env_kek_overrides_the_file(tmp_path: Path) -> None:
    key = os.urandom(32)
    kek = load_kek(tmp_path / "keys", {"PAYHUB_KEK": base64.b64encode(key).decode() + "\n"})
    assert kek.kek_id == LocalKek(key).kek_id
    assert not (tmp_path / "keys").exists()  # production never writes a key file


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("not*base64!SECRETVALUE", "not valid base64"),
        (base64.b64encode(b"SECRETVALUE-but-16").decode(), "decodes to 18 bytes"),
        ("", "decodes to 0 bytes"),
    ],
)
def test_bad_env_kek_is_named_not_echoed(tmp_path: Path, value: str, why: str) -> None:
    with pytest.raises(KeyringError, match=why) as info:
        load_kek(tmp_path, {"PAYHUB_KEK": value})
    message = str(info.value)
    assert "PAYHUB_KEK" in message
    if value:
        assert value not in message
        assert value[:8] not in message
    # Not in a chained exception either: the whole rendered traceback is value-free.
    rendered = "".join(traceback.format_exception(info.value))
    assert "SECRETVALUE" not in rendered
    assert not value or value not in rendered


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610])
def test_refuses_a_kek_file_others_can_access(tmp_path: Path, mode: int) -> None:
    load_kek(tmp_path, {})
    path = tmp_path / "kek"
    path.chmod(mode)
    with pytest.raises(KeyringError) as info:
        load_kek(tmp_path, {})
    assert str(path) in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


def test_refuses_a_kek_file_of_the_wrong_size(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 31)
    os.close(fd)
    with pytest.raises(KeyringError, match="exactly 32 bytes"):
        load_kek(tmp_path, {})


def test_refuses_a_directory_as_kek(tmp_path: Path) -> None:
    (tmp_path / "kek").mkdir(mode=0o700)
    with pytest.raises(KeyringError, match=str(tmp_path / "kek")):
        load_kek(tmp_path, {})
