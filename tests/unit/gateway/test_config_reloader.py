"""ConfigReloader: tenants and risk rules from the re-read file, everything else as it was,
listeners told; a bad file (or a listener that fails) leaves the settings in force."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from config.settings import DEFAULT_CONFIG, Settings, load_settings
from gateway.reload import ConfigReloader

DEV = DEFAULT_CONFIG.read_text()
ENV = {"PAYHUB_LISTEN": "127.0.0.1:0", "PAYHUB_HOME": "/srv/payhub"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "payhub.toml"
    path.write_text(DEV)
    return path


def test_tenants_are_swapped_and_nothing_else(config: Path) -> None:
    start = load_settings(config, env=ENV)
    reloader = ConfigReloader(start, env={})  # the file says listen 8443: the running one must stay
    seen: list[tuple[Settings, Settings]] = []
    reloader.subscribe(lambda old, new: seen.append((old, new)))
    config.write_text(
        DEV.replace(
            '[tenants.globex]\nrole = "client"', '[tenants.globex]\nrole = "client"\nenabled = false'
        ).replace("[tenants.acme]", "[tenants.initech]")
    )
    assert reloader.reload()
    now = reloader.current
    assert set(now.tenants) == {"initech", "globex", "ops"}
    assert not now.tenants["globex"].enabled
    assert msgspec.structs.replace(now, tenants=start.tenants) == start  # listen, home, limits … unchanged
    assert now.server.listen == "127.0.0.1:0"
    assert seen == [(start, now)]


@pytest.mark.parametrize(
    "broken",
    [
        DEV + "\n[tenants.acme\n",  # not TOML
        DEV.replace('role = "operator"', 'role = "admin"'),  # not a role
        DEV.replace('display_name = "payhub operations"', 'display_name = "x"\ncolour = "red"'),
    ],
)
def test_a_bad_file_keeps_the_settings_in_force(config: Path, broken: str) -> None:
    start = load_settings(config, env={})
    reloader = ConfigReloader(start, env={})
    reloader.subscribe(lambda old, new: pytest.fail("no listener call for a refused file"))
    config.write_text(broken)
    assert not reloader.reload()
    assert reloader.current is start


def test_a_missing_file_keeps_the_settings_in_force(config: Path) -> None:
    start = load_settings(config, env={})
    config.unlink()
    reloader = ConfigReloader(start, env={})
    assert not reloader.reload()
    assert reloader.current is start


def test_a_failing_listener_neither_undoes_the_reload_nor_stops_the_others(config: Path) -> None:
    reloader = ConfigReloader(load_settings(config, env={}), env={})
    calls: list[str] = []

    def failing(old: Settings, new: Settings) -> None:
        raise RuntimeError("boom")

    reloader.subscribe(failing)
    reloader.subscribe(lambda old, new: calls.append("second"))
    config.write_text(DEV.replace("[tenants.acme]", "[tenants.initech]"))
    assert reloader.reload()
    assert "initech" in reloader.current.tenants
    assert calls == ["second"]
