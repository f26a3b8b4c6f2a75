"""The attack matrix's gateway (in-process, real mTLS, real PostgreSQL, no rate limits or shedding, so
every refusal is the input's doing) and its figures table at the end of the session."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from _pytest.terminal import TerminalReporter

from config.settings import UNLIMITED, Settings
from crypto.pki import PkiPaths
from gateway.server import RunningGateway
from tests.security.matrix import MATRIX
from tests.support.api import Api, api_client
from tests.support.mtls import gateway
from tests.support.traffic import with_limits


@pytest.fixture
def roomy(settings: Settings) -> Settings:
    return with_limits(
        settings,
        per_tenant={"payment_write": UNLIMITED, "default": UNLIMITED, "max_concurrent": 1000},
        per_customer=UNLIMITED,
        per_customer_ip=UNLIMITED,
        shedding={"enabled": False},
    )


@pytest.fixture
async def gw(roomy: Settings) -> AsyncIterator[RunningGateway]:
    async with gateway(roomy) as running:
        yield running


@pytest.fixture
async def acme(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "acme", gw.api_port) as api:
        yield api


@pytest.fixture
async def globex(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "globex", gw.api_port) as api:
        yield api


@pytest.fixture
async def ops(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "ops", gw.api_port) as api:
        yield api


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    lines = MATRIX.table()
    if lines:
        terminalreporter.section("attack matrix")
        for line in lines:
            terminalreporter.write_line(line)
