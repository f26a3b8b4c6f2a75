"""Typed, frozen settings for payhub.

Settings are decoded once at start-up from a TOML file (``config/payhub.toml`` by default,
``PAYHUB_CONFIG`` to choose another) into frozen msgspec Structs, then a few deployment
values are overridden from ``PAYHUB_*`` environment variables. Unknown keys are rejected so a
typo fails loudly instead of silently falling back to a default; every error names the key.

    ConfigError
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import msgspec

DEFAULT_CONFIG = Path(__file__).with_name("payhub.toml")

Role = Literal["client", "operator"]
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and the key."""


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    listen: str = "127.0.0.1:8443"
    ops_listen: str = "127.0.0.1:9108"
    home: str = "./var"
    max_body_bytes: int = 1_048_576
    tls_handshake_timeout: float = 10.0
    tls_reload_interval: float = 1.0
    keepalive_timeout: float = 75.0
    shutdown_timeout: float = 10.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    audit_seal_interval: float = 1.0
    dev_mode: bool = False


class DatabaseSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str | None = None
    pool_min: int = 2
    pool_max: int = 10
    command_timeout: float = 10.0
    statement_cache_size: int = 256


class TenantSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role
    display_name: str = ""
    enabled: bool = True


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    tenants: dict[str, TenantSettings] = msgspec.field(default_factory=dict)
    redis_url: str | None = None
    source: str = "<defaults>"

    @property
    def home(self) -> Path:
        return Path(self.server.home)

    @property
    def pki_dir(self) -> Path:
        return self.home / "pki"

    @property
    def pg_dir(self) -> Path:
        return self.home / "pg"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"


def split_hostport(value: str, *, key: str) -> tuple[str, int]:
    """``"127.0.0.1:8443"`` → ``("127.0.0.1", 8443)``; ``"[::1]:8443"`` → ``("::1", 8443)``."""
    match = _HOSTPORT.match(value)
    if match is None or not 0 <= int(match["port"]) < 65536:
        raise ConfigError(f"{key}: expected host:port, got {value!r}")
    return match["host"].strip("[]"), int(match["port"])


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read the TOML file, apply ``PAYHUB_*`` overrides and validate; raise ConfigError naming the key."""
    env = os.environ if env is None else env
    config_path = Path(path or env.get("PAYHUB_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = config_path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read config file: {exc.strerror}") from exc
    try:
        data = msgspec.toml.decode(raw)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from exc
    # Tenants are decoded one by one so an error names the tenant ("tenants.acme.role"),
    # where msgspec alone would only say "tenants[...]".
    tenants_raw = data.pop("tenants", {})
    try:
        settings = msgspec.convert(data, type=Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{config_path}: {_describe(exc)}") from exc
    if not isinstance(tenants_raw, dict):
        raise ConfigError(f"{config_path}: invalid value for 'tenants': expected a table")
    tenants: dict[str, TenantSettings] = {}
    for tenant_id, value in tenants_raw.items():
        try:
            tenants[tenant_id] = msgspec.convert(value, type=TenantSettings)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{config_path}: {_describe(exc, f'tenants.{tenant_id}')}") from exc
    settings = msgspec.structs.replace(settings, tenants=tenants)
    settings = _apply_env(settings, env)
    _validate(settings, str(config_path))
    return msgspec.structs.replace(settings, source=str(config_path))


def _describe(exc: msgspec.ValidationError, prefix: str = "") -> str:
    # msgspec says "Expected `int`, got `str` - at `$.server.pool_max`"; show the key as a TOML path.
    text, _, where = str(exc).partition(" - at `")
    key = where.rstrip("`").removeprefix("$").removeprefix(".")
    key = ".".join(part for part in (prefix, key) if part)
    return f"invalid value for '{key}': {text}" if key else text


def _apply_env(settings: Settings, env: Mapping[str, str]) -> Settings:
    server, database = settings.server, settings.database
    if value := env.get("PAYHUB_LISTEN"):
        server = msgspec.structs.replace(server, listen=value)
    if value := env.get("PAYHUB_OPS_LISTEN"):
        server = msgspec.structs.replace(server, ops_listen=value)
    if value := env.get("PAYHUB_HOME"):
        server = msgspec.structs.replace(server, home=value)
    if value := env.get("PAYHUB_DATABASE_URL"):
        database = msgspec.structs.replace(database, url=value)
    redis_url = env.get("PAYHUB_REDIS_URL") or settings.redis_url
    return msgspec.structs.replace(settings, server=server, database=database, redis_url=redis_url)


def _validate(settings: Settings, source: str) -> None:
    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: invalid value for '{key}': {why}")

    split_hostport(settings.server.listen, key=f"{source}: server.listen")
    split_hostport(settings.server.ops_listen, key=f"{source}: server.ops_listen")
    if settings.server.max_body_bytes < 1024:
        raise fail("server.max_body_bytes", "must be at least 1024")
    for key in (
        "tls_handshake_timeout",
        "tls_reload_interval",
        "keepalive_timeout",
        "shutdown_timeout",
        "audit_seal_interval",
    ):
        if getattr(settings.server, key) <= 0:
            raise fail(f"server.{key}", "must be positive")
    db = settings.database
    if not 1 <= db.pool_min <= db.pool_max:
        raise fail("database.pool_min", "need 1 <= pool_min <= pool_max")
    if db.url is not None and not db.url.startswith(("postgresql://", "postgres://")):
        raise fail("database.url", "must be a postgresql:// URL")
    if not settings.tenants:
        raise fail("tenants", "at least one tenant is required")
    for tenant_id in settings.tenants:
        if not _TENANT_ID.match(tenant_id):
            raise fail(f"tenants.{tenant_id}", "tenant ids are lower-case letters, digits, '_' or '-'")
