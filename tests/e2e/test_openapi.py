"""``GET /v1/openapi.json``: a valid OpenAPI 3.1 document that covers every route and that real
responses validate against."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate

from crypto.pki import PkiPaths
from gateway.api import openapi
from gateway.server import RunningGateway
from tests.support.api import Api, card_payment
from tests.support.mtls import client, client_context

MONEY_MOVING = {
    ("post", "/v1/payments"),
    ("post", "/v1/payments/{id}/capture"),
    ("post", "/v1/payments/{id}/cancel"),
    ("post", "/v1/refunds"),
    ("post", "/v1/accounts/{id}/topups"),
}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture
async def document(acme: Api) -> dict[str, Any]:
    reply = await acme.get("/v1/openapi.json")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    return reply.body


def validator(document: dict[str, Any], schema_name: str) -> jsonschema.Draft202012Validator:
    """A JSON Schema 2020-12 validator (OpenAPI 3.1's dialect) for one component, refs resolved."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


def assert_valid(document: dict[str, Any], schema_name: str, instance: Any) -> None:
    errors = sorted(validator(document, schema_name).iter_errors(instance), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in METHODS
    }


async def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises with the offending path if it is not


async def test_served_bytes_are_built_once(acme: Api) -> None:
    first = await acme.get("/v1/openapi.json")
    second = await acme.get("/v1/openapi.json")
    assert first.raw == second.raw
    assert first.headers["Request-Id"] != second.headers["Request-Id"]


async def test_every_v1_route_is_documented_and_nothing_else(
    gw: RunningGateway, document: dict[str, Any]
) -> None:
    routed = {
        (route.method.lower(), route.resource.canonical)
        for route in gw.api.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"  # aiohttp adds HEAD to every GET by itself
    }
    documented = set(operations(document))
    assert routed - documented == set(), "routes missing from gateway/api/openapi.py OPERATIONS"
    assert documented - routed == set(), "documented operations that the app does not route"


async def test_operations_are_complete(document: dict[str, Any]) -> None:
    ops = operations(document)
    ids = [op["operationId"] for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert document["components"]["securitySchemes"]["mutualTLS"]["type"] == "mutualTLS"
    assert document["security"] == [{"mutualTLS": []}]
    for (method, path), op in ops.items():
        params = op.get("parameters", [])
        resolved = [
            document["components"]["parameters"][p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p
            for p in params
        ]
        header_names = {p["name"] for p in resolved if p["in"] == "header"}
        path_names = {p["name"] for p in resolved if p["in"] == "path"}
        assert path_names == {part[1:-1] for part in path.split("/") if part.startswith("{")}, path
        if (method, path) in MONEY_MOVING:
            [key] = [p for p in resolved if p["name"] == "Idempotency-Key"]
            assert key["in"] == "header"
            assert key["required"] is True
        else:  # reads, and writes that move no money (tokens, accounts, ping), take no key
            assert "Idempotency-Key" not in header_names, (method, path)
        assert "200" in op["responses"]
        for status in ("400", "403", "500"):
            ref = op["responses"][status]["$ref"]
            response = document["components"]["responses"][ref.rsplit("/", 1)[1]]
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}
        if "{" in path:
            assert "404" in op["responses"], path
    listed = ops[("get", "/v1/payments")]
    names = {p["name"] for p in listed["parameters"]}
    assert names >= {
        "limit", "starting_after", "ending_before", "status", "method", "customer",
        "biller", "created_gte", "created_lte", "amount_gte", "amount_lte",
    }  # fmt: skip
    assert {p["name"] for p in ops[("get", "/v1/events")]["parameters"]} >= {"type", "object", "limit"}
    body = ops[("post", "/v1/payments")]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CreatePaymentRequest"}


async def test_real_responses_validate_against_their_schemas(acme: Api, document: dict[str, Any]) -> None:
    made = [
        await acme.post("/v1/payments", card_payment()),
        await acme.post("/v1/payments", card_payment("4000000000000002")),
        await acme.post("/v1/payments", card_payment(capture_method="manual")),
        await acme.post(
            "/v1/payments",
            {
                "amount": 990,
                "currency": "CNY",
                "payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}},
            },
        ),
        await acme.post(
            "/v1/payments",
            {
                "amount": 4200,
                "currency": "CNY",
                "payment_method": {
                    "type": "bank_transfer",
                    "bank_transfer": {"account_number": "6222000011112222"},
                },
            },
        ),
    ]
    statuses = set()
    for reply in made:
        assert reply.status == 200, reply.body
        assert_valid(document, "Payment", reply.body)
        statuses.add(reply.body["status"])
        fetched = await acme.get(f"/v1/payments/{reply.body['id']}")
        assert_valid(document, "Payment", fetched.body)
    assert statuses == {"succeeded", "failed", "requires_capture", "requires_action", "processing"}

    refund = await acme.post("/v1/refunds", {"payment": made[0].body["id"], "amount": 100})
    assert refund.status == 200, refund.body
    assert_valid(document, "Refund", refund.body)
    token = await acme.post(
        "/v1/tokens", {"card": {"number": "5555555555554444", "exp_month": 1, "exp_year": 2031}}, key=None
    )
    assert token.status == 200, token.body
    assert_valid(document, "Token", token.body)

    payments = await acme.get("/v1/payments", limit=100)
    assert_valid(document, "PaymentList", payments.body)
    events = await acme.get("/v1/events", limit=100)
    assert_valid(document, "EventList", events.body)
    assert_valid(document, "Event", events.body["data"][0])
    ping = await acme.get("/v1/ping")
    assert_valid(document, "PingResponse", ping.body)

    for error in (
        await acme.get("/v1/payments/pay_doesnotexist"),
        await acme.get("/v1/payments", limit="0"),
        await acme.post("/v1/payments", card_payment(), key=None),
    ):
        assert error.status >= 400
        assert_valid(document, "ErrorResponse", error.body)

    # The schemas are not vacuous: a payment missing a field, or with a bad status, is refused.
    broken = dict(made[0].body)
    del broken["amount"]
    assert not validator(document, "Payment").is_valid(broken)
    assert not validator(document, "Payment").is_valid({**made[0].body, "status": "teleported"})


async def test_requests_the_document_accepts_are_the_requests_the_handlers_accept(
    acme: Api, document: dict[str, Any]
) -> None:
    """The request schemas are the handlers' own Structs: what one refuses, the other refuses."""
    good = card_payment()
    bad = {**card_payment(), "surprise": 1}
    assert validator(document, "CreatePaymentRequest").is_valid(good)
    assert not validator(document, "CreatePaymentRequest").is_valid(bad)
    assert (await acme.post("/v1/payments", bad)).status == 400


async def test_document_needs_a_client_certificate_like_every_route(
    gw: RunningGateway, pki: PkiPaths
) -> None:
    async with (
        client(pki, "acme") as session,
        session.get(f"https://localhost:{gw.api_port}/v1/openapi.json") as reply,
    ):
        assert reply.status == 200
    no_cert = client_context(pki, None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=no_cert)) as session:
        with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
            async with session.get(f"https://localhost:{gw.api_port}/v1/openapi.json") as reply:
                await reply.read()


def test_build_document_is_deterministic() -> None:
    assert openapi.build_document("1.2.3") == openapi.build_document("1.2.3")
    assert openapi.build_document("1.2.3")["info"]["version"] == "1.2.3"
