"""The SDK's retry rules, against a scripted HTTP server (the real gateway is in test_sdk_client.py
and test_sdk_retry_restart.py): what is retried, with which key and bytes, and how long it waits."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from payhub_client import AsyncPayhub, errors
from payhub_client._transport import Transport

PAYMENT = {
    "id": "pay_1",
    "status": "succeeded",
    "amount": 100,
    "currency": "CNY",
    "amount_captured": 100,
    "amount_refunded": 0,
    "capture_method": "automatic",
    "payment_method": {"type": "card"},
    "customer": None,
    "risk": None,
    "next_action": None,
    "bill_posting": None,
    "connector": "iso8583_card",
    "connector_reference": None,
    "failure": None,
    "description": None,
    "metadata": {},
    "created": "2026-06-01T08:00:00Z",
    "updated": "2026-06-01T08:00:00Z",
    "object": "payment",
    "a_field_from_the_future": {"ignored": True},
}
ENDPOINT = {
    "id": "we_1",
    "url": "https://example.com/h",
    "enabled_events": ["*"],
    "description": None,
    "status": "enabled",
    "previous_secret_expires": None,
    "created": "2026-06-01T08:00:00Z",
    "secret": "whsec_x",
}


def error(status: int, kind: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"type": kind, "code": code, "message": code, "request_id": f"req_{status}"}}
    return web.json_response(body, status=status, headers={"Request-Id": f"req_{status}", **(headers or {})})


Answer = Callable[[web.Request], web.StreamResponse]


@dataclass
class Script:
    answers: list[Answer]
    seen: list[tuple[str | None, bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.headers.get("Idempotency-Key"), await request.read()))
        answer = self.answers[min(len(self.seen), len(self.answers)) - 1]
        return answer(request)


def cut(request: web.Request) -> web.StreamResponse:
    """The connection drops after the request arrived (as when the gateway is killed)."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, dict[str, Script]]]:
    scripts: dict[str, Script] = {}

    async def route(request: web.Request) -> web.StreamResponse:
        return await scripts[request.path].handle(request)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", scripts
    await runner.cleanup()


def client(url: str, **options: Any) -> AsyncPayhub:
    return AsyncPayhub(url, ssl_context=ssl.create_default_context(), backoff_base=0.01, **options)


async def test_money_moving_post_retries_with_the_same_key_and_bytes(
    server: tuple[str, dict[str, Script]],
) -> None:
    url, scripts = server
    scripts["/v1/payments"] = Script(
        [
            cut,
            lambda r: error(503, "api_error", "overloaded"),
            lambda r: error(409, "idempotency_error", "request_in_progress", {"Retry-After": "0"}),
            lambda r: error(429, "rate_limit_error", "rate_limited", {"Retry-After": "0"}),
            lambda r: web.json_response(PAYMENT),
        ]
    )
    waits: list[tuple[float, str]] = []
    async with client(url, max_retries=4, on_retry=lambda n, delay, why: waits.append((delay, why))) as hub:
        payment = await hub.payments.create(amount=100, currency="CNY", payment_method={"type": "card"})
    assert payment.id == "pay_1"
    keys = {key for key, _ in scripts["/v1/payments"].seen}
    bodies = {body for _, body in scripts["/v1/payments"].seen}
    assert len(scripts["/v1/payments"].seen) == 5
    assert len(keys) == 1 and next(iter(keys)).startswith("phc_")  # type: ignore[union-attr]
    assert len(bodies) == 1 and orjson.loads(next(iter(bodies)))["amount"] == 100
    assert [why for _, why in waits] == [
        "ServerDisconnectedError",
        "overloaded",
        "request_in_progress",
        "rate_limited",
    ]
    assert waits[2][0] == 0 and waits[3][0] == 0  # Retry-After: 0 respected


async def test_a_given_key_is_used_and_retries_run_out(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["/v1/refunds"] = Script(
        [lambda r: error(429, "rate_limit_error", "rate_limited", {"Retry-After": "0"})]
    )
    async with client(url, max_retries=2) as hub:
        with pytest.raises(errors.RateLimitError) as limited:
            await hub.refunds.create(payment="pay_1", idempotency_key="my-key")
    assert limited.value.request_id == "req_429"
    assert [key for key, _ in scripts["/v1/refunds"].seen] == ["my-key"] * 3


async def test_a_post_without_a_key_is_not_sent_twice(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["/v1/webhook_endpoints"] = Script([cut, lambda r: web.json_response(ENDPOINT)])
    async with client(url) as hub:
        with pytest.raises(errors.APIConnectionError):
            await hub.webhook_endpoints.create(url="https://example.com/h", enabled_events=["*"])
        assert len(scripts["/v1/webhook_endpoints"].seen) == 1
        scripts["/v1/webhook_endpoints"] = Script([lambda r: error(500, "api_error", "internal_error")])
        with pytest.raises(errors.APIError) as failed:
            await hub.webhook_endpoints.create(url="https://example.com/h", enabled_events=["*"])
        assert (failed.value.status, failed.value.code) == (500, "internal_error")
        assert len(scripts["/v1/webhook_endpoints"].seen) == 1
        # 429 is refused before any processing: retried even without a key.
        scripts["/v1/webhook_endpoints"] = Script(
            [
                lambda r: error(429, "rate_limit_error", "rate_limited", {"Retry-After": "0"}),
                lambda r: web.json_response(ENDPOINT),
            ]
        )
        assert (await hub.webhook_endpoints.create(url="https://example.com/h", enabled_events=["*"])).secret
        assert [key for key, _ in scripts["/v1/webhook_endpoints"].seen] == [None, None]


async def test_gets_retry_and_other_errors_do_not(server: tuple[str, dict[str, Script]]) -> None:
    url, scripts = server
    scripts["/v1/payments/pay_1"] = Script(
        [cut, lambda r: error(502, "api_error", "bad_gateway"), lambda r: web.json_response(PAYMENT)]
    )
    scripts["/v1/payments/pay_2"] = Script(
        [lambda r: error(404, "invalid_request_error", "resource_missing")]
    )
    scripts["/v1/ping"] = Script([lambda r: web.Response(status=502, text="<html>proxy</html>")])
    async with client(url) as hub:
        assert (await hub.payments.get("pay_1")).status == "succeeded"
        with pytest.raises(errors.InvalidRequestError):
            await hub.payments.get("pay_2")
        with pytest.raises(errors.APIError) as proxy:
            await hub.ping()
    assert len(scripts["/v1/payments/pay_1"].seen) == 3
    assert len(scripts["/v1/payments/pay_2"].seen) == 1
    assert len(scripts["/v1/ping"].seen) == 4  # 1 + max_retries (3)
    assert proxy.value.status == 502 and "proxy" in proxy.value.message


def test_backoff_is_exponential_with_full_jitter() -> None:
    transport = Transport("https://localhost", ssl.create_default_context())
    for attempt, bound in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        samples = [transport.backoff(attempt) for _ in range(200)]
        assert all(0 <= s <= bound for s in samples)
        assert max(samples) > bound / 2 and len(set(samples)) > 100
