"""Webhooks end to end: a real gateway (mTLS, PostgreSQL, the delivery worker) POSTing to a real
aiohttp receiver on 127.0.0.1 that checks every signature with its own hmac code, as a tenant's
server would (not with crypto.signatures)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
import pytest
from aiohttp import web

from config.settings import Settings
from crypto.pki import PkiPaths
from gateway.logs import configure_logging
from gateway.server import RunningGateway
from tests.support.api import Api, api_client, card_payment
from tests.support.mtls import gateway

TOLERANCE = 300
WAIT = 15.0  # generous on a busy 2-core machine; every wait ends as soon as its condition holds
FAST = {
    "interval": 0.05,
    "timeout": 0.5,
    "lease": 3.0,
    "backoff_base": 0.05,
    "backoff_cap": 0.2,
    "retry_window": 60.0,
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, webhooks=msgspec.structs.replace(settings.webhooks, **FAST))


def with_webhooks(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, webhooks=msgspec.structs.replace(settings.webhooks, **changes))


# ---- the receiver ----------------------------------------------------------------------------------


def verify(header: str, body: bytes, secrets: list[str]) -> tuple[int, list[str | None]]:
    """A receiver's own check: (t, for each v1 in the header's order the known secret that made it,
    or None). Plain hmac/hashlib, as the docs show receivers."""
    pairs = [item.split("=", 1) for item in header.split(",")]
    [t] = [value for key, value in pairs if key == "t"]
    signed = t.encode() + b"." + body
    expected = [(secret, hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()) for secret in secrets]
    matches = [
        next((secret for secret, mac in expected if hmac.compare_digest(mac, given)), None)
        for key, given in pairs
        if key == "v1"
    ]
    return int(t), matches


@dataclass
class Received:
    name: str
    headers: dict[str, str]
    body: bytes
    t: int
    matches: list[str | None]  # per v1 signature, in the header's order: the secret that made it

    @property
    def verified(self) -> list[str]:
        """The secrets that signed, in the header's order; a signature no known secret made fails."""
        assert None not in self.matches, "a signature matches none of the endpoint's secrets"
        assert abs(time.time() - self.t) <= TOLERANCE, "stale signature timestamp"
        return [m for m in self.matches if m is not None]

    @property
    def signatures(self) -> int:
        return len(self.matches)

    @property
    def event(self) -> str:
        return self.headers["Payhub-Event-Id"]

    @property
    def attempt(self) -> int:
        return int(self.headers["Payhub-Attempt"])


Action = int | float  # an int answers that status; a float sleeps that long, then answers 200


@dataclass
class Receiver:
    port: int = 0
    secrets: dict[str, list[str]] = field(default_factory=dict)
    plans: dict[str, list[Action]] = field(default_factory=dict)
    default: dict[str, int] = field(default_factory=dict)
    received: list[Received] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.read()
        t, matches = verify(request.headers["Payhub-Signature"], body, self.secrets.get(name, []))
        self.received.append(Received(name, dict(request.headers), body, t, matches))
        plan = self.plans.get(name) or []
        action: Action = plan.pop(0) if plan else self.default.get(name, 200)
        if isinstance(action, float):
            await asyncio.sleep(action)
            action = 200
        if action == 302:  # a redirect is a failed attempt, never followed
            raise web.HTTPFound(self.url("redirected"))
        return web.Response(status=action, text="ok")

    def got(self, name: str) -> list[Received]:
        return [r for r in self.received if r.name == name]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{name}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    yield state
    await runner.cleanup()


@pytest.fixture
async def globex(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "globex", gw.api_port) as api:
        yield api


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    assert settings.database.url is not None
    conn = await asyncpg.connect(settings.database.url)
    yield conn
    await conn.close()


async def until(condition: Callable[[], Awaitable[bool] | bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = condition()
        if await result if not isinstance(result, bool) else result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def endpoint(
    api: Api, receiver: Receiver, name: str, events: list[str] | None = None
) -> dict[str, Any]:
    reply = await api.post(
        "/v1/webhook_endpoints", {"url": receiver.url(name), "enabled_events": events or ["*"]}, key=None
    )
    assert reply.status == 200, reply.body
    receiver.secrets.setdefault(name, []).insert(0, reply.body["secret"])
    created: dict[str, Any] = reply.body
    return created


async def pay(api: Api) -> dict[str, Any]:
    reply = await api.post("/v1/payments", card_payment())
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "succeeded"
    payment: dict[str, Any] = reply.body
    return payment


async def event_of(api: Api, payment_id: str, type_: str = "payment.succeeded") -> dict[str, Any]:
    reply = await api.get("/v1/events", object=payment_id, type=type_)
    assert reply.status == 200 and len(reply.body["data"]) == 1, reply.body
    event: dict[str, Any] = reply.body["data"][0]
    return event


# ---- delivery --------------------------------------------------------------------------------------


async def test_a_payment_is_delivered_signed_as_the_event_api_shows_it(acme: Api, receiver: Receiver) -> None:
    created = await endpoint(acme, receiver, "ok", ["payment.succeeded"])
    assert created["id"].startswith("we_") and created["object"] == "webhook_endpoint"
    assert created["secret"].startswith("whsec_") and len(created["secret"]) >= 38
    payment = await pay(acme)
    await until(lambda: len(receiver.got("ok")) == 1, "the delivery")
    [got] = receiver.got("ok")
    assert got.verified == [created["secret"]]
    event = await event_of(acme, payment["id"])
    single = await acme.get(f"/v1/events/{event['id']}")
    assert got.body == single.raw  # byte for byte what GET /v1/events/{id} answers
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Payhub-Event-Id"] == event["id"]
    assert got.headers["Payhub-Attempt"] == "1"
    assert got.headers["Payhub-Delivery"]
    assert got.headers["User-Agent"].startswith("payhub-webhooks/")
    body = msgspec.json.decode(got.body)
    assert body["type"] == "payment.succeeded" and body["data"]["object"]["id"] == payment["id"]
    assert body["data"]["object"]["updated"]
    await asyncio.sleep(0.3)
    assert len(receiver.got("ok")) == 1  # delivered once; payment.succeeded only (no other event)


async def test_retries_after_errors_and_a_timeout_then_delivers(
    acme: Api, receiver: Receiver, db: asyncpg.Connection
) -> None:
    receiver.plans["flaky"] = [500, 302, 404]
    receiver.plans["slow"] = [2.0]  # past the 0.5 s time-out
    await endpoint(acme, receiver, "flaky")
    await endpoint(acme, receiver, "slow")
    payment = await pay(acme)
    event = await event_of(acme, payment["id"])

    async def delivered() -> bool:
        count = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'")
        return bool(count == 2)

    await until(delivered, "both deliveries")
    assert [r.attempt for r in receiver.got("flaky")] == [1, 2, 3, 4]
    assert {r.event for r in receiver.got("flaky")} == {event["id"]}
    assert receiver.got("redirected") == []
    slow = receiver.got("slow")
    assert [r.attempt for r in slow] == [1, 2]
    assert all(r.verified for r in receiver.received)
    assert len({r.headers["Payhub-Delivery"] for r in slow}) == 1  # one delivery, two attempts
    rows = await db.fetch(
        "SELECT attempts, last_status, delivered_at FROM webhook_deliveries ORDER BY attempts"
    )
    assert [(r["attempts"], r["last_status"]) for r in rows] == [(2, 200), (4, 200)]


async def test_two_workers_never_make_the_same_attempt(
    settings: Settings, acme: Api, receiver: Receiver, db: asyncpg.Connection
) -> None:
    receiver.plans["busy"] = [0.05] * 40  # slow answers, so both workers have work in flight
    await endpoint(acme, receiver, "busy")
    async with gateway(settings):  # a second process's worker over the same database
        for _ in range(12):
            await pay(acme)

        async def all_delivered() -> bool:
            pending = await db.fetchval("SELECT count(*) FROM webhook_deliveries WHERE status <> 'delivered'")
            total = await db.fetchval("SELECT count(*) FROM webhook_deliveries")
            return bool(pending == 0 and total >= 12)

        await until(all_delivered, "every delivery")
    attempts = [(r.event, r.attempt) for r in receiver.got("busy")]
    assert len(attempts) == len(set(attempts)), "an attempt was sent twice"
    assert len({event for event, _ in attempts}) == 12


async def test_dead_after_the_retry_window_then_redelivered_by_hand(
    settings: Settings, pki: PkiPaths, receiver: Receiver, db: asyncpg.Connection
) -> None:
    receiver.default["down"] = 500
    short = with_webhooks(settings, retry_window=0.6)
    async with gateway(short) as running, api_client(pki, "acme", running.api_port) as api:
        created = await endpoint(api, receiver, "down")
        payment = await pay(api)
        event = await event_of(api, payment["id"])

        async def dead() -> bool:
            return bool(await db.fetchval("SELECT status = 'dead' FROM webhook_deliveries"))

        await until(dead, "the delivery to die")
        tried = len(receiver.got("down"))
        assert tried >= 2
        metrics = (await _metrics(running)).splitlines()
        assert any(line.startswith('payhub_webhook_deliveries_total{outcome="dead"} 1.0') for line in metrics)
        await asyncio.sleep(0.3)
        assert len(receiver.got("down")) == tried  # no attempt after death

        receiver.default["down"] = 200
        again = await api.post(f"/v1/events/{event['id']}/redeliver", {"endpoint": created["id"]}, key=None)
        assert again.status == 200, again.body
        assert again.body["object"] == "redelivery"
        [delivery] = again.body["deliveries"]
        assert (delivery["status"], delivery["endpoint"], delivery["attempts"]) == (
            "pending",
            created["id"],
            tried,
        )
        await until(lambda: receiver.got("down")[-1].attempt == tried + 1, "the redelivery")
        assert receiver.got("down")[-1].verified == [created["secret"]]
        await until(
            lambda: _status(db, "delivered"),
            "the redelivered delivery to be recorded",
        )

        # An event no endpoint was subscribed to has nothing to redeliver: 409; unknown ids: 404.
        await api.request("DELETE", f"/v1/webhook_endpoints/{created['id']}")
        later = await event_of(api, (await pay(api))["id"])
        nothing = await api.post(f"/v1/events/{later['id']}/redeliver", key=None)
        assert (nothing.status, nothing.body["error"]["code"]) == (409, "no_webhook_deliveries")
        unknown = await api.post("/v1/events/evt_nope/redeliver", key=None)
        assert (unknown.status, unknown.body["error"]["param"]) == (404, "id")
        gone = await api.post(f"/v1/events/{event['id']}/redeliver", {"endpoint": created["id"]}, key=None)
        assert (gone.status, gone.body["error"]["param"]) == (404, "endpoint")


async def _status(db: asyncpg.Connection, status: str) -> bool:
    return bool(await db.fetchval("SELECT bool_and(status = $1) FROM webhook_deliveries", status))


async def _metrics(running: RunningGateway) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{running.ops_port}/metrics") as reply,
    ):
        return await reply.text()


async def test_rotation_signs_with_both_secrets_during_the_overlap(acme: Api, receiver: Receiver) -> None:
    created = await endpoint(acme, receiver, "rot")
    old = created["secret"]
    rotated = await acme.post(
        f"/v1/webhook_endpoints/{created['id']}/rotate_secret", {"expires_in": 3600}, key=None
    )
    assert rotated.status == 200, rotated.body
    new = rotated.body["secret"]
    assert new != old and new.startswith("whsec_")
    assert rotated.body["previous_secret_expires"] is not None
    receiver.secrets["rot"] = [new, old]
    await pay(acme)
    await until(lambda: len(receiver.got("rot")) == 1, "the delivery")
    [got] = receiver.got("rot")
    assert got.signatures == 2
    assert got.verified == [new, old]  # the new secret's signature first

    ended = await acme.post(
        f"/v1/webhook_endpoints/{created['id']}/rotate_secret", {"expires_in": 0}, key=None
    )
    assert ended.status == 200 and ended.body["previous_secret_expires"] is None
    newest = ended.body["secret"]
    receiver.secrets["rot"] = [newest, new, old]
    await pay(acme)
    await until(lambda: len(receiver.got("rot")) == 2, "the second delivery")
    last = receiver.got("rot")[-1]
    assert (last.signatures, last.verified) == (1, [newest])


async def test_delete_stops_pending_deliveries(acme: Api, receiver: Receiver, db: asyncpg.Connection) -> None:
    receiver.default["gone"] = 500
    created = await endpoint(acme, receiver, "gone")
    await pay(acme)
    await until(lambda: len(receiver.got("gone")) >= 1, "a first attempt")
    deleted = await acme.request("DELETE", f"/v1/webhook_endpoints/{created['id']}")
    assert deleted.status == 200 and deleted.body == {
        "id": created["id"],
        "deleted": True,
        "object": "webhook_endpoint",
    }
    assert await db.fetchval("SELECT status FROM webhook_deliveries") == "canceled"
    tried = len(receiver.got("gone"))
    await asyncio.sleep(0.5)
    assert len(receiver.got("gone")) <= tried + 1  # at most the attempt already in flight
    assert (await acme.get(f"/v1/webhook_endpoints/{created['id']}")).status == 404
    again = await acme.request("DELETE", f"/v1/webhook_endpoints/{created['id']}")
    assert again.status == 404


# ---- secrets ---------------------------------------------------------------------------------------


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    configure_logging("debug", stream=buffer)
    yield buffer
    configure_logging("warning")


async def test_the_secret_is_shown_once_and_never_logged(
    captured_logs: io.StringIO, acme: Api, receiver: Receiver, db: asyncpg.Connection
) -> None:
    receiver.plans["quiet"] = [500]
    created = await endpoint(acme, receiver, "quiet")
    rotated = await acme.post(f"/v1/webhook_endpoints/{created['id']}/rotate_secret", key=None)
    assert rotated.status == 200
    secrets = [created["secret"], rotated.body["secret"]]
    receiver.secrets["quiet"] = secrets[::-1]
    await pay(acme)
    await until(lambda: len(receiver.got("quiet")) == 2, "a failed attempt and its retry")
    signature = receiver.got("quiet")[-1].headers["Payhub-Signature"]

    shown = [
        (await acme.get(f"/v1/webhook_endpoints/{created['id']}")).raw,
        (await acme.get("/v1/webhook_endpoints")).raw,
    ]
    for raw in shown:
        assert b'"secret"' not in raw
    listed = msgspec.json.decode(shown[1])
    assert [e["id"] for e in listed["data"]] == [created["id"]]
    assert listed["data"][0]["url"] == receiver.url("quiet")

    logs = captured_logs.getvalue()
    assert "webhook.attempt" in logs  # the worker did log its attempts
    rows = []
    for table in ("webhook_endpoints", "webhook_deliveries", "audit_events", "events"):
        rows += [str(tuple(row)) for row in await db.fetch(f"SELECT * FROM {table}")]
    at_rest = "\n".join(rows)
    for secret in secrets:
        assert secret not in logs
        assert secret not in at_rest
        assert secret.encode().hex() not in at_rest
    for mac in signature.split(","):
        assert mac not in logs


# ---- refusals and tenancy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "http://example.com/hook",
        "https://user:pw@example.com/hook",
        "ftp://example.com/hook",
    ],
)
async def test_unsafe_urls_are_refused(acme: Api, url: str) -> None:
    reply = await acme.post("/v1/webhook_endpoints", {"url": url, "enabled_events": ["*"]}, key=None)
    assert reply.status == 400, reply.body
    assert reply.body["error"]["param"] == "url"
    assert reply.body["error"]["message"]


async def test_plain_http_to_loopback_needs_dev_mode(settings: Settings, pki: PkiPaths) -> None:
    production = msgspec.structs.replace(
        settings, server=msgspec.structs.replace(settings.server, dev_mode=False)
    )
    async with gateway(production) as running, api_client(pki, "acme", running.api_port) as api:
        for url in ("http://127.0.0.1:9/hook", "https://127.0.0.1:9/hook", "http://localhost:9/hook"):
            reply = await api.post("/v1/webhook_endpoints", {"url": url, "enabled_events": ["*"]}, key=None)
            assert (reply.status, reply.body["error"]["param"]) == (400, "url"), url


async def test_bad_input_names_the_param(acme: Api) -> None:
    cases = [
        (
            {"url": "https://example.com/h", "enabled_events": ["payment.succeeded", "payment.nope"]},
            "enabled_events.1",
        ),
        ({"url": "https://example.com/h", "enabled_events": []}, "enabled_events"),
        ({"url": "https://example.com/h"}, "enabled_events"),
        ({"enabled_events": ["*"]}, "url"),
        ({"url": "https://example.com/h", "enabled_events": ["*"], "secret": "mine"}, "secret"),
    ]
    for body, param in cases:
        reply = await acme.post("/v1/webhook_endpoints", body, key=None)
        assert (reply.status, reply.body["error"]["param"]) == (400, param), body
    created = await acme.post(
        "/v1/webhook_endpoints", {"url": "https://example.com/h", "enabled_events": ["*"]}, key=None
    )
    bad = await acme.post(
        f"/v1/webhook_endpoints/{created.body['id']}/rotate_secret", {"expires_in": -1}, key=None
    )
    assert (bad.status, bad.body["error"]["param"]) == (400, "expires_in")


async def test_another_tenant_cannot_see_or_touch_the_endpoints(
    acme: Api, globex: Api, receiver: Receiver
) -> None:
    created = await endpoint(acme, receiver, "mine")
    path = f"/v1/webhook_endpoints/{created['id']}"
    assert (await globex.get(path)).status == 404
    assert (await globex.request("DELETE", path)).status == 404
    assert (await globex.post(f"{path}/rotate_secret", key=None)).status == 404
    assert (await globex.get("/v1/webhook_endpoints")).body["data"] == []
    payment = await pay(acme)
    event = await event_of(acme, payment["id"])
    assert (await globex.post(f"/v1/events/{event['id']}/redeliver", key=None)).status == 404
    assert (await acme.get(path)).status == 200  # still acme's, unchanged
