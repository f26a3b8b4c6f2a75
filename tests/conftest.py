"""Shared fixtures: real PostgreSQL per test, dev PKI per session, settings pointing at both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from config.settings import RiskSettings, RoutingSettings, Settings, load_settings
from crypto.pki import PkiPaths, init_pki
from gateway.logs import configure_logging
from gateway.store.embedded import with_database
from tests.support import postgres

configure_logging("warning")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    with postgres.admin_url() as url:
        yield url


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    name = postgres.create_template(pg_admin_url)
    yield name
    postgres.drop_database(pg_admin_url, name)


@pytest.fixture
async def db_url(pg_admin_url: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    name = await postgres.clone_database(pg_admin_url, pg_template)
    yield with_database(pg_admin_url, name)
    await postgres.drop_database_async(pg_admin_url, name)


@pytest.fixture(scope="session")
def payhub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PAYHUB_HOME with the dev PKI for the configured tenants (created once per session)."""
    home = tmp_path_factory.mktemp("home")
    settings = load_settings(env={"PAYHUB_HOME": str(home)})
    init_pki(PkiPaths(settings.pki_dir), {tenant: t.role for tenant, t in settings.tenants.items()})
    return home


@pytest.fixture
def pki(payhub_home: Path) -> PkiPaths:
    return PkiPaths(payhub_home / "pki")


@pytest.fixture
def settings(payhub_home: Path, db_url: str) -> Settings:
    env = {
        "PAYHUB_HOME": str(payhub_home),
        "PAYHUB_DATABASE_URL": db_url,
        "PAYHUB_LISTEN": "127.0.0.1:0",
        "PAYHUB_OPS_LISTEN": "127.0.0.1:0",
    }
    loaded = load_settings(env=env)
    server = msgspec.structs.replace(loaded.server, tls_reload_interval=0.2, tls_handshake_timeout=2.0)
    # The dev config routes to the sandbox simulators on fixed ports; tests that exercise them start
    # their own on free ports (tests/support/{acquirer,billers}.py). Everything else pays through
    # the in-process connector so tests never depend on a port being free.
    inprocess = ["inprocess"]
    routing = RoutingSettings(card=inprocess, bank_transfer=inprocess, wallet=inprocess, prepaid=inprocess)
    return msgspec.structs.replace(loaded, server=server, routing=routing, risk=quiet_velocity(loaded.risk))


# Tests of other features pay with the same few cards and customers many times a minute; the dev
# velocity rules would hold those payments. They run in shadow mode here (still evaluated);
# tests/e2e/test_risk.py runs the dev rules as configured.
VELOCITY_RULES = frozenset({"card_testing", "topup_burst", "velocity_card_burst", "otp_failures"})


def quiet_velocity(risk: RiskSettings) -> RiskSettings:
    rules = [
        msgspec.structs.replace(rule, mode="shadow") if rule.id in VELOCITY_RULES else rule
        for rule in risk.rules
    ]
    return msgspec.structs.replace(risk, rules=rules)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Run async tests on uvloop, the loop payhub serves on."""
    return {"uvloop": uvloop.new_event_loop}


def pytest_report_header() -> list[str]:
    where = "PAYHUB_DATABASE_URL" if os.environ.get("PAYHUB_DATABASE_URL") else "embedded pgserver"
    redis = os.environ.get("PAYHUB_REDIS_URL") or "none (Redis tests skipped)"
    return [f"payhub: PostgreSQL from {where}; Redis: {redis}"]
