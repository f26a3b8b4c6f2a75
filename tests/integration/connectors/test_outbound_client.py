"""The shared outbound HTTP client against a real simulator socket: timeouts, retries only when
idempotent, and the per-connector circuit breaker opening under injected faults and recovering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from config.settings import ConnectorSettings
from connectors.base import ConnectorUnavailable, OutcomeUnknown
from connectors.breaker import CircuitBreaker, CircuitState
from connectors.http import OutboundClient
from connectors.sandbox.common import FAULTS, HttpSimulator, serve_app, simulator_app
from gateway.metrics import Metrics
from tests.unit.connectors.peers import never_accepting

CONFIG = ConnectorSettings(connect_timeout=0.5, read_timeout=0.5, breaker_failures=3, breaker_reset=0.3)


VANISHING = web.AppKey("vanishing", dict)  # "server": the running simulator; "seen": request bodies


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def answer_then_go_down(request: web.Request) -> web.Response:
    """Read the request, stop listening (a retry is refused), answer 503 and close the connection."""
    state = request.app[VANISHING]
    state["seen"].append(await request.read())
    for site in list(state["server"].runner.sites):
        await site.stop()
    return web.json_response({"error": "busy"}, status=503, headers={"Connection": "close"})


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[HttpSimulator, web.Application]]:
    app = simulator_app()
    app.router.add_get("/thing", ok)
    app.router.add_post("/thing", ok)
    app.router.add_post("/vanish", answer_then_go_down)
    app[VANISHING] = {"seen": []}
    running = await serve_app(app, "127.0.0.1", 0)
    app[VANISHING]["server"] = running
    yield running, app
    await running.close()


@pytest.fixture
async def client() -> AsyncIterator[tuple[OutboundClient, Metrics]]:
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        yield OutboundClient(session, metrics), metrics


def url(simulator: HttpSimulator) -> str:
    return f"http://127.0.0.1:{simulator.runner.addresses[0][1]}/thing"


async def test_breaker_opens_under_injected_errors_and_recovers(
    simulator: tuple[HttpSimulator, web.Application], client: tuple[OutboundClient, Metrics]
) -> None:
    running, app = simulator
    http, metrics = client
    assert (await http.request("sim", CONFIG, "read", "GET", url(running), idempotent=True)).status == 200
    app[FAULTS].error_rate = 1.0  # every answer is a 503 now
    # Idempotent: two tries per call; the second call's first try reaches the threshold of 3 and
    # its retry finds the circuit open: still "unknown", since a try of that call reached the peer.
    for _ in range(2):
        with pytest.raises(OutcomeUnknown):
            await http.request("sim", CONFIG, "read", "GET", url(running), idempotent=True)
    assert http.breaker("sim", CONFIG).state is CircuitState.OPEN
    with pytest.raises(ConnectorUnavailable, match="circuit open"):  # fails fast, nothing sent
        await http.request("sim", CONFIG, "read", "GET", url(running), idempotent=True)
    gauge = metrics.registry.get_sample_value("payhub_connector_circuit_state", {"connector": "sim"})
    assert gauge == CircuitState.OPEN
    app[FAULTS].error_rate = 0.0  # the service recovers
    await asyncio.sleep(CONFIG.breaker_reset + 0.05)
    assert (await http.request("sim", CONFIG, "read", "GET", url(running), idempotent=True)).status == 200
    assert http.breaker("sim", CONFIG).state is CircuitState.CLOSED
    opened = metrics.registry.get_sample_value(
        "payhub_connector_calls_total", {"connector": "sim", "operation": "read", "outcome": "circuit_open"}
    )
    assert opened == 2  # the blocked retry and the fast-failed call


async def test_non_idempotent_calls_are_not_retried(
    simulator: tuple[HttpSimulator, web.Application], client: tuple[OutboundClient, Metrics]
) -> None:
    running, app = simulator
    http, metrics = client
    app[FAULTS].latency = 1.0  # longer than the read timeout: sent, no answer
    with pytest.raises(OutcomeUnknown):
        await http.request("sim", CONFIG, "pay", "POST", url(running), json={}, idempotent=False)
    calls = metrics.registry.get_sample_value(
        "payhub_connector_calls_total", {"connector": "sim", "operation": "pay", "outcome": "timeout"}
    )
    assert calls == 1  # a pay whose outcome is unknown is never sent again blindly


async def test_nothing_listening_is_unavailable_not_unknown(client: tuple[OutboundClient, Metrics]) -> None:
    http, _ = client
    with pytest.raises(ConnectorUnavailable):
        await http.request("gone", CONFIG, "pay", "POST", "http://127.0.0.1:9/x", json={}, idempotent=False)


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    with never_accepting() as port:
        yield port


async def test_connect_timeout_is_unavailable_not_unknown(
    unanswered_port: int, client: tuple[OutboundClient, Metrics]
) -> None:
    # The connection never opened, so not a byte of the request went out: nothing can have moved.
    http, metrics = client
    with pytest.raises(ConnectorUnavailable, match="cannot connect"):
        await http.request(
            "slow", CONFIG, "pay", "POST", f"http://127.0.0.1:{unanswered_port}/x", json={}, idempotent=True
        )
    refused = metrics.registry.get_sample_value(
        "payhub_connector_calls_total", {"connector": "slow", "operation": "pay", "outcome": "unavailable"}
    )
    assert refused == 2  # idempotent: retried, and the retry could not connect either


async def test_a_retry_that_cannot_connect_after_a_try_reached_the_peer_is_unknown(
    simulator: tuple[HttpSimulator, web.Application], client: tuple[OutboundClient, Metrics]
) -> None:
    running, app = simulator
    http, _ = client
    # The first try is answered 503 (it may have been done); the retry finds the port refused.
    target = url(running).replace("/thing", "/vanish")
    with pytest.raises(OutcomeUnknown):  # "cannot connect" on the retry says nothing about the first
        await http.request("sim", CONFIG, "pay", "POST", target, json={"ref": "att_1"}, idempotent=True)
    assert app[VANISHING]["seen"] == [b'{"ref": "att_1"}']  # the one try that got there


async def test_a_dropped_connection_after_the_request_is_unknown(
    simulator: tuple[HttpSimulator, web.Application], client: tuple[OutboundClient, Metrics]
) -> None:
    running, app = simulator
    http, _ = client
    app[FAULTS].drop_rate = 1.0  # the simulator read the request, then cut the connection
    with pytest.raises(OutcomeUnknown):
        await http.request("sim", CONFIG, "pay", "POST", url(running), json={}, idempotent=False)


def test_half_open_allows_one_trial_at_a_time() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10.0, clock=lambda: now[0])
    breaker.failure()
    assert breaker.allow()
    breaker.failure()
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()  # the one trial call
    assert not breaker.allow()
    breaker.failure()  # the trial failed: open again for a full reset period
    now[0] = 15.0
    assert not breaker.allow()
    now[0] = 20.0
    assert breaker.allow()
    breaker.success()
    assert breaker.state is CircuitState.CLOSED
