"""Start every simulator on its port: ``payhub sandbox`` (own process) or ``serve --sandbox``.

After the simulators, the ``books`` service (:mod:`connectors.sandbox.books`), which reads their books
and restarts any of them on demand (``POST /restart``)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from config.settings import SandboxService, Settings
from connectors.sandbox.common import Simulator
from gateway.logs import get_logger

log = get_logger("connectors.sandbox")

# service → "module:start" where ``async def start(settings) -> Simulator``.
SIMULATORS: Mapping[SandboxService, str] = {
    "acquirer": "connectors.sandbox.acquirer:start",
    "utility": "connectors.sandbox.utility:start",
    "telecom": "connectors.sandbox.telecom:start",
    "bank": "connectors.sandbox.bank:start",
    "ewallet": "connectors.sandbox.ewallet:start",
    "fx": "connectors.sandbox.fx:start",
    "messages": "connectors.sandbox.messages:start",
}


class Sandbox:
    def __init__(self, simulators: list[Simulator]) -> None:
        self._simulators = simulators

    async def close(self) -> None:
        for simulator in reversed(self._simulators):
            await simulator.close()


async def start_sandbox(settings: Settings) -> Sandbox:
    # Imported here, like the simulators: importing the runner does not import every simulator.
    from connectors.sandbox import books

    started: dict[SandboxService, Simulator] = {}
    try:
        for service, path in SIMULATORS.items():
            module_name, _, function = path.partition(":")
            start = getattr(importlib.import_module(module_name), function)
            started[service] = await start(settings)
            log.info("sandbox.started", service=service, port=settings.sandbox.port(service))
        started["books"] = await books.start(settings, started)
        log.info("sandbox.started", service="books", port=settings.sandbox.books)
    except BaseException:
        await Sandbox(list(started.values())).close()
        raise
    return Sandbox(list(started.values()))
