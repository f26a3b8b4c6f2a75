"""The gateway every e2e test talks to (in-process, real mTLS sockets, real PostgreSQL) and acme's client.

A module that needs a differently configured gateway overrides ``gw``; ``acme`` follows it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.server import RunningGateway
from tests.support.api import Api, api_client
from tests.support.mtls import gateway


@pytest.fixture
async def gw(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with gateway(settings) as running:
        yield running


@pytest.fixture
async def acme(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "acme", gw.api_port) as api:
        yield api
