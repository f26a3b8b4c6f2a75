"""Dev RSA keys of the utility biller: created once, private halves 0600, one winner under races."""

from __future__ import annotations

import multiprocessing
import stat
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from config.settings import ConfigError
from connectors.utility_biller.client import (
    KeyFileError,
    connector_keys,
    dev_keys,
    ensure_dev_keypair,
    load_private_key,
)


def public_pem(directory: str, name: str) -> bytes:
    key = ensure_dev_keypair(Path(directory), name)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_dev_keys_are_created_once_with_private_files_0600(tmp_path: Path) -> None:
    hub, biller = dev_keys(tmp_path / "keys")
    directory = tmp_path / "keys" / "sandbox"
    assert sorted(p.name for p in directory.iterdir()) == [
        "hub_utility.pem", "hub_utility.pub", "utility_biller.pem", "utility_biller.pub",
    ]  # fmt: skip
    for name in ("hub_utility.pem", "utility_biller.pem"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600
    assert hub.key_size == biller.key_size == 2048
    again, _ = dev_keys(tmp_path / "keys")
    assert again.private_numbers() == hub.private_numbers()
    published = serialization.load_pem_public_key((directory / "utility_biller.pub").read_bytes())
    assert published.public_numbers() == biller.public_key().public_numbers()  # type: ignore[union-attr]


def test_concurrent_processes_agree_on_one_key(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=4, mp_context=multiprocessing.get_context("fork")) as pool:
        keys = list(pool.map(public_pem, [str(tmp_path)] * 8, ["hub_utility"] * 8))
    assert len(set(keys)) == 1
    assert (tmp_path / "hub_utility.pub").read_bytes() == keys[0]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_unsafe_or_mismatched_key_files_are_refused(tmp_path: Path) -> None:
    ensure_dev_keypair(tmp_path, "hub_utility")
    (tmp_path / "hub_utility.pem").chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_private_key(tmp_path / "hub_utility.pem")
    (tmp_path / "hub_utility.pem").chmod(0o600)
    ensure_dev_keypair(tmp_path, "other")
    (tmp_path / "hub_utility.pub").write_bytes((tmp_path / "other.pub").read_bytes())
    with pytest.raises(KeyFileError, match="not the public half"):
        ensure_dev_keypair(tmp_path, "hub_utility")


def test_production_keys_come_from_config_paths_never_generated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both"):
        connector_keys(tmp_path, {"private_key": str(tmp_path / "hub.pem")})
    with pytest.raises(KeyFileError, match="cannot read"):
        connector_keys(tmp_path, {"private_key": str(tmp_path / "hub.pem"), "biller_public_key": "/nope.pub"})
    assert not (tmp_path / "sandbox").exists()
    ensure_dev_keypair(tmp_path / "prod", "hub")
    ensure_dev_keypair(tmp_path / "prod", "biller")
    private, public = connector_keys(
        tmp_path,
        {
            "private_key": str(tmp_path / "prod/hub.pem"),
            "biller_public_key": str(tmp_path / "prod/biller.pub"),
        },
    )
    assert private.key_size == public.key_size == 2048
    with pytest.raises(KeyFileError, match="not a PEM public key"):
        connector_keys(
            tmp_path,
            {
                "private_key": str(tmp_path / "prod/hub.pem"),
                "biller_public_key": str(tmp_path / "prod/hub.pem"),
            },
        )
