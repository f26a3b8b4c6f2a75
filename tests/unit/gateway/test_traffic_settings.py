"""The [limits] section: defaults match DESIGN §12, the bench config raises them, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import DEFAULT_CONFIG, ConfigError, load_settings

BENCH_CONFIG = DEFAULT_CONFIG.with_name("bench.toml")
MINIMAL = '[tenants.acme]\nrole = "client"\n'


def test_dev_limits_are_the_documented_ones() -> None:
    limits = load_settings(DEFAULT_CONFIG, env={}).limits
    rates = limits.rates_for("acme")
    assert rates.payment_write == "100/2 seconds"  # 50/s, bursts of 100
    assert rates.default == "200/second"
    assert (rates.read, rates.write) == (None, None)  # share the default ("200 other requests/s")
    assert limits.per_customer == "120/minute"
    assert limits.strategy == "moving-window"
    assert limits.input.max_json_depth == 32


def test_bench_config_has_the_same_tenants_and_higher_limits() -> None:
    dev = load_settings(DEFAULT_CONFIG, env={})
    bench = load_settings(BENCH_CONFIG, env={})
    assert bench.tenants == dev.tenants
    assert bench.limits.per_tenant.max_concurrent > 100 * dev.limits.per_tenant.max_concurrent
    assert bench.limits.shedding.payment_write.inflight > dev.limits.shedding.payment_write.inflight


def test_per_tenant_overrides_merge_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "payhub.toml"
    path.write_text(MINIMAL + '[limits.tenants.acme]\nread = "5/second"\nmax_concurrent = 3\n')
    limits = load_settings(path, env={}).limits
    acme = limits.rates_for("acme")
    assert (acme.read, acme.max_concurrent, acme.payment_write) == ("5/second", 3, "100/2 seconds")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[limits.per_tenant]\ndefault = "lots"\n', "limits.per_tenant.default"),
        ('[limits.per_tenant]\npayment_write = "0/second"\n', "limits.per_tenant.payment_write"),
        ("[limits.per_tenant]\nmax_concurrent = 0\n", "limits.per_tenant.max_concurrent"),
        ('[limits.per_tenant]\nburst = "1"\n', "burst"),
        ('[limits]\nper_customer = "120 a minute"\n', "limits.per_customer"),
        ('[limits]\nstrategy = "token-bucket"\n', "limits.strategy"),
        ("[limits]\nredis_timeout = 0\n", "limits.redis_timeout"),
        ('[limits.tenants.initech]\nread = "1/second"\n', "limits.tenants.initech"),
        ('[limits.tenants.acme]\nread = "fast"\n', "limits.tenants.acme.read"),
        ("[limits.tenants.acme]\nread = 5\n", "limits.tenants.acme.read"),
        ("[limits.shedding]\nread = { lag = 0.1 }\n", "limits.shedding.read"),
        ("[limits.shedding]\nread = { lag = 0, inflight = 1 }\n", "limits.shedding.read.lag"),
        ("[limits.input]\nmax_json_depth = 1\n", "limits.input.max_json_depth"),
        ("[limits.input]\nheader_timeout = -1\n", "limits.input.header_timeout"),
    ],
)
def test_invalid_limits_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "payhub.toml"
    path.write_text(text + MINIMAL)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    assert key in str(info.value)
    assert str(path) in str(info.value)
