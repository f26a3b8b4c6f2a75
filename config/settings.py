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
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from limits import parse_many

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


# ``[limits]``: traffic protection (docs/traffic.md). Rates are strings in the notation of the
# `limits` library ("100/2 seconds", "200 per second; 5000 per hour"), or "unlimited".
UNLIMITED = "unlimited"
ROUTE_CLASSES = ("payment_write", "write", "read", "ops")
RateStrategy = Literal["moving-window", "sliding-window-counter", "fixed-window"]


class TenantRates(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Per-tenant request rates by route class. A class set to None has no budget of its own and
    shares the single ``default`` budget with every other such class ("200 other requests/s")."""

    payment_write: str | None = "100/2 seconds"  # 50/s sustained with bursts of 100 (moving window)
    write: str | None = None
    read: str | None = None
    ops: str | None = None
    default: str = "200/second"
    max_concurrent: int = 50


class TenantLimitOverrides(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[limits.tenants.<id>]``: any key set here replaces the ``[limits.per_tenant]`` value."""

    payment_write: str | None = None
    write: str | None = None
    read: str | None = None
    ops: str | None = None
    default: str | None = None
    max_concurrent: int | None = None


class ShedThreshold(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Shed a route class when smoothed event-loop lag (seconds) or in-flight requests reach these."""

    lag: float
    inflight: int


class SheddingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool = True
    lag_interval: float = 0.05  # how often the lag monitor wakes up
    read: ShedThreshold = ShedThreshold(lag=0.1, inflight=256)
    write: ShedThreshold = ShedThreshold(lag=0.25, inflight=384)  # also operator routes
    payment_write: ShedThreshold = ShedThreshold(lag=1.0, inflight=512)


class InputLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Hostile-input limits (the body size cap is ``server.max_body_bytes``)."""

    max_json_depth: int = 32
    max_json_string_bytes: int = 8192  # longest JSON string token, escapes included
    header_timeout: float = 10.0  # a request head must arrive within this (slowloris)
    body_timeout: float = 30.0  # and its body within this
    max_line_size: int = 8190  # request line
    max_field_size: int = 8190  # one header line
    max_headers: int = 64


class LimitSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    strategy: RateStrategy = "moving-window"
    per_tenant: TenantRates = msgspec.field(default_factory=TenantRates)
    tenants: dict[str, TenantLimitOverrides] = msgspec.field(default_factory=dict)
    per_customer: str = "120/minute"  # payment creations per customer id, within a tenant
    per_customer_ip: str = "600/minute"  # payment creations per payer IP (customer.ip), within a tenant
    redis_key_prefix: str = "payhub:limits"
    redis_timeout: float = 0.25  # connect, read and pool-wait timeout of each Redis call
    redis_max_connections: int = 64
    redis_fallback: float = 5.0  # after a Redis error, per-process limits for this many seconds
    shedding: SheddingSettings = msgspec.field(default_factory=SheddingSettings)
    input: InputLimits = msgspec.field(default_factory=InputLimits)

    def rates_for(self, tenant: str) -> TenantRates:
        """The tenant's effective rates: ``per_tenant`` with its ``[limits.tenants.<id>]`` overrides."""
        overrides = self.tenants.get(tenant)
        if overrides is None:
            return self.per_tenant
        changed = {
            name: value
            for name in TenantLimitOverrides.__struct_fields__
            if (value := getattr(overrides, name)) is not None
        }
        return msgspec.structs.replace(self.per_tenant, **changed)


SandboxService = Literal["acquirer", "utility", "telecom", "bank", "ewallet", "fx", "messages", "books"]


class SandboxSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where the sandbox simulators listen (DESIGN §3); connectors default to these endpoints."""

    host: str = "127.0.0.1"
    acquirer: int = 9701  # ISO 8583 over TCP
    utility: int = 9702
    telecom: int = 9703
    bank: int = 9704
    ewallet: int = 9705
    fx: int = 9706
    messages: int = 9707  # SMS / e-mail / push sink
    books: int = 9708  # GET /books: every simulator's book (connectors.sandbox.books)

    def port(self, service: SandboxService) -> int:
        port: int = getattr(self, service)
        return port

    def url(self, service: SandboxService) -> str:
        return f"http://{self.host}:{self.port(service)}"


class ConnectorSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One connector's settings (``[connectors.<name>]``)."""

    enabled: bool = True
    # Override of the endpoint ("host:port" for TCP connectors, a URL for HTTP ones); default: the sandbox.
    endpoint: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    breaker_failures: int = 5  # consecutive failures that open the circuit
    breaker_reset: float = 10.0  # seconds before a half-open trial call
    secret: str | None = None  # shared secret for signed callbacks (dev value only in payhub.toml)
    # An outcome still unknown after this many status inquiries, or this many seconds after the
    # attempt was made (whichever comes first), goes to the connector's terminal policy
    # (docs/faults.md): nothing is polled forever.
    inquiry_budget: Annotated[int, msgspec.Meta(ge=1)] = 25
    inquiry_max_age: Annotated[float, msgspec.Meta(gt=0)] = 3600.0
    options: dict[str, str] = msgspec.field(default_factory=dict)  # connector-specific knobs


class RoutingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Connectors per payment method, in fallback order (fallback only when no money can have moved)."""

    card: list[str] = msgspec.field(default_factory=lambda: ["inprocess"])
    bank_transfer: list[str] = msgspec.field(default_factory=lambda: ["inprocess"])
    wallet: list[str] = msgspec.field(default_factory=lambda: ["inprocess"])
    prepaid: list[str] = msgspec.field(default_factory=lambda: ["inprocess"])

    def for_method(self, method: str) -> list[str]:
        connectors: list[str] = getattr(self, method, [])
        return connectors


class FxSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """FX rates and quotes (``[fx]``, docs/fx.md)."""

    spread: str = "0.005"  # kept by the hub on every conversion (0.5 %), booked as revenue
    quote_ttl: float = 300.0  # seconds a quote locks its rate
    max_rate_age: float = 60.0  # older rates are stale: quotes are refused (503 rates_stale)
    refresh_interval: float = 10.0  # how often the rates are read from the FX feed


class NotificationSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[notifications]`` (docs/notifications.md): bill reminders, low-balance alerts and the
    messages (SMS, e-mail) sent to customers. Seconds unless stated."""

    enabled: bool = True  # run the reminder scheduler and the message sender in this process
    reminder_interval: float = 3600.0  # each bill reminder asks its biller this often
    scheduler_interval: float = 30.0  # how often the scheduler looks for due reminders
    message_interval: float = 5.0  # how often the sender looks for due messages
    message_retry: float = 30.0  # first retry of a failed send after this long, then doubling…
    message_retry_cap: float = 3600.0  # …up to this
    message_max_age: float = 86400.0  # a message still failing this long after it was queued is dead
    biller_retry: float = 300.0  # a reminder whose biller did not answer asks again after this
    default_lead_days: int = 3  # days before the due date, for customers who did not choose
    batch: int = 100  # reminders or messages claimed per statement
    lease: float = 120.0  # a claimed reminder or message is another process's again after this


RiskAction = Literal["challenge", "review", "block"]
FailMode = Literal["open", "closed"]


class RiskRuleSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One rule (``[[risk.rules]]``): a CEL expression over the features of risk/features.py that
    adds ``score`` (may be negative) and/or forces ``action`` when true; ``shadow`` rules are
    evaluated, logged and counted, never applied."""

    id: str
    when: str
    score: int = 0
    action: RiskAction | None = None
    mode: Literal["active", "shadow"] = "active"
    message: str = ""


class RiskThresholds(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A total score at or above a threshold gives that decision."""

    challenge: int = 50
    review: int = 80
    block: int = 100


class RiskTenantSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[risk.tenants.<id>]``: the tenant's own thresholds, fail mode and extra rules."""

    thresholds: RiskThresholds | None = None
    fail_mode: FailMode | None = None
    rules: list[RiskRuleSettings] = msgspec.field(default_factory=list)


class RiskSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[risk]`` (DESIGN §9, docs/risk.md)."""

    enabled: bool = True
    thresholds: RiskThresholds = msgspec.field(default_factory=RiskThresholds)
    # When the feature read fails or takes longer than feature_timeout: "open" decides on the
    # request alone (no velocity, no history); "closed" holds the payment for review.
    fail_mode: FailMode = "open"
    feature_timeout: float = 0.25
    rules: list[RiskRuleSettings] = msgspec.field(default_factory=list)
    tenants: dict[str, RiskTenantSettings] = msgspec.field(default_factory=dict)
    # Static list entries every tenant shares, "<kind>:<value>" (kinds: ip, email, customer,
    # device, msisdn, bin); operators add more at /v1/admin/lists.
    deny: list[str] = msgspec.field(default_factory=list)
    allow: list[str] = msgspec.field(default_factory=list)
    otp_ttl: float = 300.0  # seconds an OTP or a device challenge stays valid
    otp_max_tries: int = 5  # wrong answers before the customer's step-up is locked
    otp_lockout: float = 1800.0  # seconds the step-up stays locked


class WebhookSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[webhooks]`` (docs/webhooks.md): the delivery worker and the endpoints' defaults. Seconds."""

    enabled: bool = True  # run the delivery worker in this process
    interval: float = 0.2  # how often the worker looks for due deliveries
    batch: int = 100  # at most this many deliveries claimed per statement
    concurrency: int = 32  # POSTs in flight per process
    per_endpoint: int = 8  # at most this many of one endpoint's deliveries per claim (fairness)
    timeout: float = 10.0  # total time for one POST (connect, send, answer)
    lease: float = 60.0  # a claimed delivery is another worker's again after this (a crash)
    backoff_base: float = 5.0  # first retry after about this long, then doubling…
    backoff_cap: float = 3600.0  # …up to this
    retry_window: float = 86400.0  # a delivery is retried this long, then dead (set per endpoint at creation)
    rotation_overlap: float = 86400.0  # default expires_in of the previous secret after a rotation


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    database: DatabaseSettings = msgspec.field(default_factory=DatabaseSettings)
    tenants: dict[str, TenantSettings] = msgspec.field(default_factory=dict)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    sandbox: SandboxSettings = msgspec.field(default_factory=SandboxSettings)
    connectors: dict[str, ConnectorSettings] = msgspec.field(default_factory=dict)
    fx: FxSettings = msgspec.field(default_factory=FxSettings)
    routing: RoutingSettings = msgspec.field(default_factory=RoutingSettings)
    notifications: NotificationSettings = msgspec.field(default_factory=NotificationSettings)
    risk: RiskSettings = msgspec.field(default_factory=RiskSettings)
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
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
    # Same for per-tenant limit overrides ("limits.tenants.acme.read").
    limits_raw = data.get("limits")
    limit_overrides_raw = limits_raw.pop("tenants", {}) if isinstance(limits_raw, dict) else {}
    try:
        settings = msgspec.convert(data, type=Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{config_path}: {_describe(exc)}") from exc
    settings = _with_limit_overrides(settings, limit_overrides_raw, config_path)
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


def _with_limit_overrides(settings: Settings, raw: object, config_path: Path) -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError(f"{config_path}: invalid value for 'limits.tenants': expected a table")
    overrides: dict[str, TenantLimitOverrides] = {}
    for tenant_id, value in raw.items():
        try:
            overrides[tenant_id] = msgspec.convert(value, type=TenantLimitOverrides)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{config_path}: {_describe(exc, f'limits.tenants.{tenant_id}')}") from exc
    limits = msgspec.structs.replace(settings.limits, tenants=overrides)
    return msgspec.structs.replace(settings, limits=limits)


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


def _validate_fx(fx: FxSettings, fail: Callable[[str, str], ConfigError]) -> None:
    try:
        spread = Decimal(fx.spread)
    except ArithmeticError:
        raise fail("fx.spread", "must be a decimal number such as 0.005") from None
    if not (spread.is_finite() and 0 <= spread < 1):
        raise fail("fx.spread", "must be at least 0 and below 1")
    for key in ("quote_ttl", "max_rate_age", "refresh_interval"):
        if not getattr(fx, key) > 0:
            raise fail(f"fx.{key}", "must be positive")


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
    _validate_limits(settings, fail)
    _validate_fx(settings.fx, fail)
    _validate_risk(settings.risk, fail)
    _validate_notifications(settings.notifications, fail)
    _validate_webhooks(settings.webhooks, fail)


def _validate_rate(value: str | None, key: str, fail: Callable[[str, str], ConfigError]) -> None:
    if value is None or value == UNLIMITED:
        return
    try:
        items = parse_many(value)
    except ValueError as exc:
        raise fail(key, f'{value!r} is not a rate such as "200/second" or "100 per 2 seconds"') from exc
    if any(item.amount < 1 for item in items):
        raise fail(key, "a rate must allow at least 1 request (use tenants.<id>.enabled = false to block)")


def _validate_limits(settings: Settings, fail: Callable[[str, str], ConfigError]) -> None:
    limits = settings.limits
    rate_names = (*ROUTE_CLASSES, "default")
    for name in rate_names:
        _validate_rate(getattr(limits.per_tenant, name), f"limits.per_tenant.{name}", fail)
    if limits.per_tenant.max_concurrent < 1:
        raise fail("limits.per_tenant.max_concurrent", "must be at least 1")
    for tenant_id, overrides in limits.tenants.items():
        if tenant_id not in settings.tenants:
            raise fail(f"limits.tenants.{tenant_id}", "no such tenant in [tenants]")
        for name in rate_names:
            _validate_rate(getattr(overrides, name), f"limits.tenants.{tenant_id}.{name}", fail)
        if overrides.max_concurrent is not None and overrides.max_concurrent < 1:
            raise fail(f"limits.tenants.{tenant_id}.max_concurrent", "must be at least 1")
    _validate_rate(limits.per_customer, "limits.per_customer", fail)
    _validate_rate(limits.per_customer_ip, "limits.per_customer_ip", fail)
    if not limits.redis_key_prefix:
        raise fail("limits.redis_key_prefix", "must not be empty")
    if limits.redis_max_connections < 1:
        raise fail("limits.redis_max_connections", "must be at least 1")
    for key in ("redis_timeout", "redis_fallback"):
        if getattr(limits, key) <= 0:
            raise fail(f"limits.{key}", "must be positive")
    _validate_shedding_and_input(limits, fail)


def _validate_shedding_and_input(limits: LimitSettings, fail: Callable[[str, str], ConfigError]) -> None:
    shedding = limits.shedding
    if shedding.lag_interval <= 0:
        raise fail("limits.shedding.lag_interval", "must be positive")
    for name in ("read", "write", "payment_write"):
        threshold: ShedThreshold = getattr(shedding, name)
        if threshold.lag <= 0:
            raise fail(f"limits.shedding.{name}.lag", "must be positive")
        if threshold.inflight < 0:
            raise fail(f"limits.shedding.{name}.inflight", "must not be negative")
    inputs = limits.input
    for key in ("header_timeout", "body_timeout"):
        if getattr(inputs, key) <= 0:
            raise fail(f"limits.input.{key}", "must be positive")
    for key, low in (
        ("max_json_depth", 2),
        ("max_json_string_bytes", 64),
        ("max_line_size", 256),
        ("max_field_size", 256),
        ("max_headers", 8),
    ):
        if getattr(inputs, key) < low:
            raise fail(f"limits.input.{key}", f"must be at least {low}")


LIST_KINDS = ("ip", "email", "customer", "device", "msisdn", "bin")


def _validate_risk(risk: RiskSettings, fail: Callable[[str, str], ConfigError]) -> None:
    for where, thresholds in [("risk.thresholds", risk.thresholds)] + [
        (f"risk.tenants.{t}.thresholds", ts.thresholds) for t, ts in risk.tenants.items() if ts.thresholds
    ]:
        if not thresholds.challenge <= thresholds.review <= thresholds.block:
            raise fail(where, "need challenge <= review <= block")
    if risk.feature_timeout <= 0 or risk.otp_ttl <= 0 or risk.otp_lockout <= 0 or risk.otp_max_tries < 1:
        raise fail("risk", "feature_timeout, otp_ttl, otp_lockout and otp_max_tries must be positive")
    for name in ("deny", "allow"):
        for entry in getattr(risk, name):
            kind, _, value = entry.partition(":")
            if kind not in LIST_KINDS or not value:
                raise fail(f"risk.{name}", f"{entry!r}: expected <kind>:<value> with a kind in {LIST_KINDS}")


def _validate_webhooks(webhooks: WebhookSettings, fail: Callable[[str, str], ConfigError]) -> None:
    for key in ("interval", "timeout", "lease", "backoff_base", "backoff_cap", "retry_window"):
        if not getattr(webhooks, key) > 0:  # NaN too
            raise fail(f"webhooks.{key}", "must be positive")
    if not webhooks.rotation_overlap >= 0:
        raise fail("webhooks.rotation_overlap", "must not be negative")
    for key in ("batch", "concurrency", "per_endpoint"):
        if getattr(webhooks, key) < 1:
            raise fail(f"webhooks.{key}", "must be at least 1")
    if webhooks.lease <= webhooks.timeout:
        # A lease shorter than a POST would let a second worker start the same delivery meanwhile.
        raise fail("webhooks.lease", "must be longer than webhooks.timeout")
    if webhooks.backoff_cap < webhooks.backoff_base:
        raise fail("webhooks.backoff_cap", "must be at least webhooks.backoff_base")


def _validate_notifications(notes: NotificationSettings, fail: Callable[[str, str], ConfigError]) -> None:
    for key in (
        "reminder_interval",
        "scheduler_interval",
        "message_interval",
        "message_retry",
        "message_retry_cap",
        "message_max_age",
        "biller_retry",
        "lease",
    ):
        if not getattr(notes, key) > 0:  # NaN too
            raise fail(f"notifications.{key}", "must be positive")
    if not 0 <= notes.default_lead_days <= 60:
        raise fail("notifications.default_lead_days", "must be from 0 to 60")
    if notes.batch < 1:
        raise fail("notifications.batch", "must be at least 1")
