"""The gateway routed to the utility and telecom simulators, all in-process on free ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import msgspec

from config.settings import ConnectorSettings, Settings
from connectors.sandbox import telecom as telecom_sandbox
from connectors.sandbox import utility as utility_sandbox
from connectors.sandbox.common import HttpSimulator
from gateway.keys import BILLERS
from gateway.server import RunningGateway
from gateway.services.billers import BillerCatalog
from tests.support.mtls import gateway


@dataclass
class Running:
    gw: RunningGateway
    utility_port: int
    utility: utility_sandbox.UtilityState

    @property
    def catalog(self) -> BillerCatalog:
        return self.gw.api[BILLERS]


def port_of(simulator: HttpSimulator) -> int:
    return int(simulator.runner.addresses[0][1])


@asynccontextmanager
async def biller_stack(settings: Settings, *, utility_read_timeout: float = 1.0) -> AsyncIterator[Running]:
    connectors = {
        **settings.connectors,
        "utility_biller": ConnectorSettings(read_timeout=utility_read_timeout),
        "telecom_topup": ConnectorSettings(secret="api-test-telecom-secret"),
    }
    sandbox = msgspec.structs.replace(settings.sandbox, utility=0, telecom=0)
    settings = msgspec.structs.replace(settings, sandbox=sandbox, connectors=connectors)
    utility = await utility_sandbox.start(settings)
    telecom = await telecom_sandbox.start(settings)
    ports = msgspec.structs.replace(sandbox, utility=port_of(utility), telecom=port_of(telecom))
    try:
        async with gateway(msgspec.structs.replace(settings, sandbox=ports)) as gw:
            yield Running(gw, port_of(utility), utility.runner.app[utility_sandbox.UTILITY_STATE])
    finally:
        await telecom.close()
        await utility.close()
