"""Broken object-level authorization: another tenant's object answers 404, never 403 or 200 (DESIGN §5).

acme makes one of everything; globex's certificate then tries every route that takes an id, and
every place an id can be smuggled in (request bodies, list cursors), on acme's objects. Each must
answer exactly what a made-up id answers, and acme's objects must be unchanged afterwards.

The router is enumerated: a new route with ``{…}`` in its path fails this test until a probe for
it is added to ``PROBES``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from crypto.pki import PkiPaths
from gateway.keys import DB_POOL
from gateway.server import RunningGateway
from tests.support.api import Api, Reply, api_client, card_payment

# A made-up id of each kind, shaped like a real one: the 404 for acme's object must look the same.
NOBODY = {
    "payment": "pay_000000000000000000000000",
    "captured": "pay_000000000000000000000000",
    "refund": "re_000000000000000000000000",
    "token": "tok_000000000000000000000000",
    "event": "evt_000000000000000000000000",
    "account": "acct_000000000000000000000000",
    "webhook_endpoint": "we_000000000000000000000000",
    "reminder": "rem_000000000000000000000000",
    "fx_quote": "fxq_000000000000000000000000",
}


@dataclass
class Acme:
    """acme's objects, by kind (``payment`` awaits capture, ``captured`` is refundable)."""

    ids: dict[str, str]


Probe = Callable[[Api, dict[str, str]], Awaitable[Reply]]


def _get(template: str, kind: str) -> Probe:
    async def probe(api: Api, ids: dict[str, str]) -> Reply:
        return await api.get(template.format(id=ids[kind]))

    return probe


def _head(template: str, kind: str) -> Probe:
    async def probe(api: Api, ids: dict[str, str]) -> Reply:
        return await api.request("HEAD", template.format(id=ids[kind]))

    return probe


def _post(template: str, kind: str, body: dict[str, Any]) -> Probe:
    async def probe(api: Api, ids: dict[str, str]) -> Reply:
        return await api.post(template.format(id=ids[kind]), body)

    return probe


def _delete(template: str, kind: str) -> Probe:
    async def probe(api: Api, ids: dict[str, str]) -> Reply:
        return await api.request("DELETE", template.format(id=ids[kind]))

    return probe


# Every route with an id in its path: (method, route template) → probes.
PROBES: dict[tuple[str, str], Probe] = {
    ("GET", "/v1/payments/{id}"): _get("/v1/payments/{id}", "payment"),
    ("HEAD", "/v1/payments/{id}"): _head("/v1/payments/{id}", "payment"),
    ("POST", "/v1/payments/{id}/capture"): _post("/v1/payments/{id}/capture", "payment", {}),
    ("POST", "/v1/payments/{id}/cancel"): _post("/v1/payments/{id}/cancel", "payment", {}),
    ("POST", "/v1/payments/{id}/confirm"): _post("/v1/payments/{id}/confirm", "payment", {"otp": "123456"}),
    ("GET", "/v1/refunds/{id}"): _get("/v1/refunds/{id}", "refund"),
    ("HEAD", "/v1/refunds/{id}"): _head("/v1/refunds/{id}", "refund"),
    ("GET", "/v1/events/{id}"): _get("/v1/events/{id}", "event"),
    ("HEAD", "/v1/events/{id}"): _head("/v1/events/{id}", "event"),
    ("GET", "/v1/accounts/{id}"): _get("/v1/accounts/{id}", "account"),
    ("HEAD", "/v1/accounts/{id}"): _head("/v1/accounts/{id}", "account"),
    ("GET", "/v1/accounts/{id}/entries"): _get("/v1/accounts/{id}/entries", "account"),
    ("HEAD", "/v1/accounts/{id}/entries"): _head("/v1/accounts/{id}/entries", "account"),
    ("POST", "/v1/accounts/{id}/topups"): _post(
        "/v1/accounts/{id}/topups",
        "account",
        {k: v for k, v in card_payment(amount=500).items() if k != "customer"},
    ),
    ("POST", "/v1/events/{id}/redeliver"): _post("/v1/events/{id}/redeliver", "event", {}),
    ("GET", "/v1/webhook_endpoints/{id}"): _get("/v1/webhook_endpoints/{id}", "webhook_endpoint"),
    ("HEAD", "/v1/webhook_endpoints/{id}"): _head("/v1/webhook_endpoints/{id}", "webhook_endpoint"),
    ("DELETE", "/v1/webhook_endpoints/{id}"): _delete("/v1/webhook_endpoints/{id}", "webhook_endpoint"),
    ("POST", "/v1/webhook_endpoints/{id}/rotate_secret"): _post(
        "/v1/webhook_endpoints/{id}/rotate_secret", "webhook_endpoint", {}
    ),
    ("GET", "/v1/reminders/{id}"): _get("/v1/reminders/{id}", "reminder"),
    ("HEAD", "/v1/reminders/{id}"): _head("/v1/reminders/{id}", "reminder"),
    ("DELETE", "/v1/reminders/{id}"): _delete("/v1/reminders/{id}", "reminder"),
    ("GET", "/v1/fx/quotes/{id}"): _get("/v1/fx/quotes/{id}", "fx_quote"),
    ("HEAD", "/v1/fx/quotes/{id}"): _head("/v1/fx/quotes/{id}", "fx_quote"),
}


# Routes whose "{…}" names no tenant object, so there is nothing of acme's to probe for.
NOT_TENANT_OBJECTS: frozenset[tuple[str, str]] = frozenset(
    {
        # {name} is a connector; a notice is authenticated by the connector's signature, not by a
        # tenant (tests/e2e/test_callbacks.py: a forged or misdirected notice changes nothing).
        ("POST", "/v1/connectors/{name}/callbacks"),
        # The biller catalog is shared by every tenant (like Stripe's country specs): nothing to leak.
        ("GET", "/v1/billers/{id}"),
        ("HEAD", "/v1/billers/{id}"),
        # Operator routes act across tenants by design (DESIGN §5); a client certificate gets 403
        # there whatever the id (tests/e2e/test_risk.py, tests/unit/gateway/test_routes.py).
        ("POST", "/v1/reviews/{id}/approve"),
        ("POST", "/v1/reviews/{id}/reject"),
        ("POST", "/v1/manual_reviews/{id}/resolve"),  # tests/e2e/test_terminal_policies.py: 403
        ("GET", "/v1/admin/lists/{list}"),
        ("HEAD", "/v1/admin/lists/{list}"),
        ("POST", "/v1/admin/lists/{list}"),
        ("DELETE", "/v1/admin/lists/{list}/{id}"),
        # {id} is a customer id, which each tenant names in its own space: globex's "cus_acme" is
        # another customer than acme's, with its own preferences (tests/e2e/test_preferences.py
        # test_preferences_are_the_tenants_own); there is no object of acme's to reach.
        ("GET", "/v1/customers/{id}/preferences"),
        ("HEAD", "/v1/customers/{id}/preferences"),
        ("PUT", "/v1/customers/{id}/preferences"),
    }
)


def _body_probe(path: str, make: Callable[[dict[str, str]], dict[str, Any]]) -> Probe:
    async def probe(api: Api, ids: dict[str, str]) -> Reply:
        return await api.post(path, make(ids))

    return probe


def _list_probe(path: str, **params: str) -> Probe:
    async def probe(api: Api, ids: dict[str, str]) -> Reply:
        return await api.get(path, **{name: ids[kind] for name, kind in params.items()})

    return probe


# Subscribed to an event these tests never cause: the delivery worker has nothing to send.
WEBHOOK_ENDPOINT = {"url": "https://example.com/payhub", "enabled_events": ["bill.due_soon"]}


# Ids that travel in a body or a query string instead of the path.
SMUGGLED: dict[str, Probe] = {
    "refund acme's payment": _body_probe("/v1/refunds", lambda ids: {"payment": ids["captured"]}),
    "pay with acme's token": _body_probe(
        "/v1/payments",
        lambda ids: {
            "amount": 100,
            "currency": "CNY",
            "payment_method": {"type": "card", "card": {"token": ids["token"]}},
        },
    ),
    "pay from acme's balance": _body_probe(
        "/v1/payments",
        lambda ids: {
            "amount": 100,
            "currency": "CNY",
            "payment_method": {"type": "balance", "balance": {"account": ids["account"]}},
        },
    ),
    "payments after acme's payment": _list_probe("/v1/payments", starting_after="payment"),
    "payments before acme's payment": _list_probe("/v1/payments", ending_before="payment"),
    "events after acme's event": _list_probe("/v1/events", starting_after="event"),
    "events before acme's event": _list_probe("/v1/events", ending_before="event"),
    "webhook endpoints after acme's": _list_probe("/v1/webhook_endpoints", starting_after="webhook_endpoint"),
    "webhook endpoints before acme's": _list_probe("/v1/webhook_endpoints", ending_before="webhook_endpoint"),
    "refunds after acme's": _list_probe("/v1/refunds", starting_after="refund"),
    "refunds before acme's": _list_probe("/v1/refunds", ending_before="refund"),
    "reminders after acme's": _list_probe("/v1/reminders", starting_after="reminder"),
    "reminders before acme's": _list_probe("/v1/reminders", ending_before="reminder"),
    "low-balance alert on acme's balance": _body_probe(
        "/v1/reminders", lambda ids: {"type": "low_balance", "account": ids["account"], "threshold": 100}
    ),
}


@pytest.fixture
async def globex(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "globex", gw.api_port) as api:
        yield api


async def make_acme_objects(acme: Api, gw: RunningGateway) -> dict[str, str]:
    """One of each of acme's objects, by kind (also the security attack matrix's)."""

    async def ok(reply: Reply) -> dict[str, Any]:
        assert reply.status == 200, reply.body
        return reply.body

    authorized = await ok(await acme.post("/v1/payments", card_payment(capture_method="manual")))
    assert authorized["status"] == "requires_capture"  # capture and cancel would both work for acme
    captured = await ok(await acme.post("/v1/payments", card_payment(amount=9000)))
    refund = await ok(await acme.post("/v1/refunds", {"payment": captured["id"], "amount": 1000}))
    token = await ok(
        await acme.post(
            "/v1/tokens", {"card": {"number": "5555555555554444", "exp_month": 3, "exp_year": 2031}}
        )
    )
    account = await ok(await acme.post("/v1/accounts", {"currency": "CNY", "customer": "cus_acme"}))
    events = (await acme.get("/v1/events", object=captured["id"])).body["data"]
    endpoint = await ok(await acme.post("/v1/webhook_endpoints", WEBHOOK_ENDPOINT, key=None))
    reminder = await ok(
        await acme.post(
            "/v1/reminders", {"type": "low_balance", "account": account["id"], "threshold": 500}, key=None
        )
    )
    # A quote as POST /v1/fx/quotes stores it (this gateway has no FX feed to price one from).
    async with gw.api[DB_POOL].acquire() as conn:
        await conn.execute(
            """INSERT INTO fx_quotes (id, tenant, from_currency, to_currency, from_amount, to_amount, fee,
                                      mid_rate, rate, spread, rates_as_of, expires_at)
               VALUES ('fxq_acme1', 'acme', 'CNY', 'USD', 7136, 1000, 36, 0.1408, 0.1401, 0.005,
                       now(), now() + interval '5 minutes')"""
        )
    return {
        "payment": authorized["id"],
        "captured": captured["id"],
        "refund": refund["id"],
        "token": token["id"],
        "event": events[0]["id"],
        "account": account["id"],
        "webhook_endpoint": endpoint["id"],
        "reminder": reminder["id"],
        "fx_quote": "fxq_acme1",
    }


@pytest.fixture
async def acme_objects(acme: Api, gw: RunningGateway) -> Acme:
    return Acme(await make_acme_objects(acme, gw))


async def snapshot(api: Api, ids: dict[str, str]) -> dict[str, Any]:
    """Everything acme can see, to compare before and after globex's attempts."""
    views: dict[str, Any] = {}
    for name, path in (
        ("payment", f"/v1/payments/{ids['payment']}"),
        ("captured", f"/v1/payments/{ids['captured']}"),
        ("refund", f"/v1/refunds/{ids['refund']}"),
        ("event", f"/v1/events/{ids['event']}"),
        ("account", f"/v1/accounts/{ids['account']}"),
        ("webhook_endpoint", f"/v1/webhook_endpoints/{ids['webhook_endpoint']}"),
        ("reminder", f"/v1/reminders/{ids['reminder']}"),
        ("fx_quote", f"/v1/fx/quotes/{ids['fx_quote']}"),
        ("entries", f"/v1/accounts/{ids['account']}/entries"),
        ("payments", "/v1/payments?limit=100"),
        ("events", "/v1/events?limit=100"),
    ):
        reply = await api.get(path)
        assert reply.status == 200, (name, reply.body)
        views[name] = reply.body
    return views


def assert_not_found(reply: Reply, what: str) -> None:
    assert reply.status == 404, (what, reply.status, reply.body)
    if reply.body is None:  # HEAD: no body, but the status says it all
        return
    error = reply.body["error"]
    assert set(error) <= {"type", "code", "message", "param", "request_id"}, what
    assert (error["type"], error["code"]) == ("invalid_request_error", "resource_missing"), what
    assert error["request_id"] == reply.headers["Request-Id"], what


def normalized(reply: Reply, ids: dict[str, str]) -> Any:
    """The error with the probed id and request id taken out: what an attacker could compare."""
    if reply.body is None:
        return reply.status
    error = dict(reply.body["error"])
    del error["request_id"]
    for value in ids.values():
        error["message"] = error["message"].replace(value, "<id>")
    return reply.status, error


async def test_every_route_with_an_id_is_probed(gw: RunningGateway) -> None:
    routed = {
        (route.method, route.resource.canonical)
        for route in gw.api.router.routes()
        if route.resource is not None and "{" in route.resource.canonical
    }
    missing = routed - set(PROBES) - NOT_TENANT_OBJECTS
    assert not missing, f"add a BOLA probe for: {sorted(missing)}"
    assert set(PROBES) - routed == set(), "probes for routes that no longer exist"


async def test_another_tenants_objects_answer_404_everywhere(
    acme: Api, globex: Api, acme_objects: Acme
) -> None:
    ids = acme_objects.ids
    before = await snapshot(acme, ids)

    for (method, template), probe in {**PROBES, **{(n, ""): p for n, p in SMUGGLED.items()}}.items():
        what = f"{method} {template}".strip()
        theirs = await probe(globex, ids)
        assert_not_found(theirs, what)
        # Indistinguishable from an id that exists nowhere.
        made_up = await probe(globex, NOBODY)
        assert normalized(theirs, ids) == normalized(made_up, NOBODY), what

    # Idempotency keys are per tenant: globex using a key first changes nothing for acme's same key.
    capture = f"/v1/payments/{ids['payment']}/capture"
    assert_not_found(await globex.post(capture, {}, key="shared-key"), "capture with a shared key")

    assert await snapshot(acme, ids) == before

    # acme can still use everything globex poked at.
    captured = await acme.post(capture, {}, key="shared-key")
    assert captured.status == 200, captured.body
    assert captured.body["status"] == "succeeded"
    paid = await acme.post(
        "/v1/payments",
        {
            "amount": 100,
            "currency": "CNY",
            "payment_method": {"type": "card", "card": {"token": ids["token"]}},
        },
    )
    assert paid.body["status"] == "succeeded", paid.body


async def test_lists_show_only_the_callers_objects(acme: Api, globex: Api, acme_objects: Acme) -> None:
    ids = acme_objects.ids
    own = await globex.post("/v1/payments", card_payment(amount=4321))
    assert own.status == 200
    payments = await globex.get("/v1/payments", limit=100)
    assert [p["id"] for p in payments.body["data"]] == [own.body["id"]]
    events = await globex.get("/v1/events", limit=100)
    assert [e["data"]["object"]["id"] for e in events.body["data"]] == [own.body["id"]]
    for params in ({"customer": "cus_42"}, {"status": "requires_capture"}, {"method": "card"}):
        listed = await globex.get("/v1/payments", **params)
        assert set(p["id"] for p in listed.body["data"]) <= {own.body["id"]}, params
    for object_id in ids.values():
        assert (await globex.get("/v1/events", object=object_id)).body["data"] == []
    # acme sees its own and none of globex's.
    acme_ids = {p["id"] for p in (await acme.get("/v1/payments", limit=100)).body["data"]}
    assert own.body["id"] not in acme_ids
    assert {ids["payment"], ids["captured"]} <= acme_ids
