from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import DEFAULT_CONFIG, ConfigError, load_settings, split_hostport


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "payhub.toml"
    path.write_text(text)
    return path


MINIMAL = '[tenants.acme]\nrole = "client"\n'


def test_dev_config_has_the_documented_tenants_and_ports() -> None:
    settings = load_settings(DEFAULT_CONFIG, env={})
    assert {t: s.role for t, s in settings.tenants.items()} == {
        "acme": "client",
        "globex": "client",
        "ops": "operator",
    }
    assert settings.server.listen == "127.0.0.1:8443"
    assert settings.server.ops_listen == "127.0.0.1:9108"
    assert settings.database.url is None  # embedded PostgreSQL by default


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "PAYHUB_LISTEN": "0.0.0.0:9443",
        "PAYHUB_OPS_LISTEN": "[::1]:9999",
        "PAYHUB_HOME": str(tmp_path),
        "PAYHUB_DATABASE_URL": "postgresql://u@db/payhub",
        "PAYHUB_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    settings = load_settings(write(tmp_path, MINIMAL), env=env)
    assert settings.server.listen == "0.0.0.0:9443"
    assert split_hostport(settings.server.ops_listen, key="x") == ("::1", 9999)
    assert settings.pki_dir == tmp_path / "pki"
    assert settings.database.url == "postgresql://u@db/payhub"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_payhub_config_env_selects_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    assert load_settings(env={"PAYHUB_CONFIG": str(path)}).source == str(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nlisten_port = 1\n" + MINIMAL, "listen_port"),
        ("[database]\npool_max = 'ten'\n" + MINIMAL, "database.pool_max"),
        ("[database]\npool_min = 5\npool_max = 2\n" + MINIMAL, "database.pool_min"),
        ("[server]\nlisten = 'localhost'\n" + MINIMAL, "server.listen"),
        ("[server]\nlog_level = 'chatty'\n" + MINIMAL, "server.log_level"),
        ("[server]\ntls_handshake_timeout = 0\n" + MINIMAL, "server.tls_handshake_timeout"),
        ('[tenants.acme]\nrole = "admin"\n', "tenants.acme.role"),
        ('[tenants.Acme]\nrole = "client"\n', "tenants.Acme"),
        ("[server]\n", "tenants"),
        ('[database]\nurl = "mysql://x"\n' + MINIMAL, "database.url"),
    ],
)
def test_invalid_config_names_the_bad_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[server\n"), env={})


def test_settings_are_frozen() -> None:
    settings = load_settings(DEFAULT_CONFIG, env={})
    with pytest.raises(AttributeError):
        settings.server.listen = "x"  # type: ignore[misc]
