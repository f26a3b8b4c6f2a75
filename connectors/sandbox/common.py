"""Helpers shared by the simulators: serving an aiohttp app, fault knobs."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler


class Simulator(Protocol):
    async def close(self) -> None: ...


@dataclass
class Faults:
    """Knobs a test or a load run turns at ``POST /faults`` (HTTP simulators) or directly."""

    latency: float = 0.0  # seconds added to every answer
    error_rate: float = 0.0  # share of requests answered 503 (HTTP) / left unanswered (TCP)
    drop_rate: float = 0.0  # share of connections closed without an answer

    async def delay(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)

    def error(self) -> bool:
        return self.error_rate > 0 and random.random() < self.error_rate  # noqa: S311 - test traffic

    def drop(self) -> bool:
        return self.drop_rate > 0 and random.random() < self.drop_rate  # noqa: S311 - test traffic


FAULTS = web.AppKey("faults", Faults)


async def set_faults(request: web.Request) -> web.Response:
    body = await request.json()
    faults = request.app[FAULTS]
    for name in ("latency", "error_rate", "drop_rate"):
        if name in body:
            setattr(faults, name, float(body[name]))
    return web.json_response(
        {"latency": faults.latency, "error_rate": faults.error_rate, "drop_rate": faults.drop_rate}
    )


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    faults = request.app[FAULTS]
    if request.path != "/faults":
        await faults.delay()
        if faults.drop() and request.transport is not None:
            request.transport.abort()
            raise asyncio.CancelledError
        if faults.error():
            return web.json_response({"error": "injected fault"}, status=503)
    return await handler(request)


def simulator_app() -> web.Application:
    """An aiohttp app with fault knobs at POST /faults."""
    app = web.Application(middlewares=[fault_middleware])
    app[FAULTS] = Faults()
    app.router.add_post("/faults", set_faults)
    return app


class HttpSimulator:
    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve_app(app: web.Application, host: str, port: int) -> HttpSimulator:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return HttpSimulator(runner)
