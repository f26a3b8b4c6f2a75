"""``GET /v1/openapi.json``: a valid OpenAPI 3.1 document that covers every route and that real
responses validate against."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import jsonschema
import orjson
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
    ("post", "/v1/payments/{id}/confirm"),  # resumes a held payment: it authorizes
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
        for status, answer in op["responses"].items():
            if status == "200":
                continue
            response = document["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
            assert set(response["content"]) == {"application/json"}, (method, path, status)
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


# ---- the rules a schema-driven client needs (tests/fuzz generates requests from them) ------------

CALLBACKS = ("post", "/v1/connectors/{name}/callbacks")
COMMON = {"200", "400", "500", "503"}
TENANT = COMMON | {"403", "429"}
BODY = {"408", "413"}
KEYED = TENANT | BODY | {"404", "409", "422"}
EXPECTED_STATUSES = {
    ("get", "/v1/ping"): TENANT,
    ("post", "/v1/ping"): TENANT | BODY,
    ("post", "/v1/payments"): KEYED,
    ("get", "/v1/payments"): TENANT | {"404"},  # an unknown cursor
    ("get", "/v1/payments/{id}"): TENANT | {"404"},
    ("post", "/v1/payments/{id}/capture"): KEYED,
    ("post", "/v1/accounts"): TENANT | BODY,
    ("post", "/v1/accounts/{id}/topups"): KEYED,
    ("post", "/v1/tokens"): TENANT | BODY,
    ("post", "/v1/bills/fetch"): TENANT | BODY | {"404"},
    # Connectors carry no tenant identity (no 403) and spend no tenant budget (no 429).
    CALLBACKS: COMMON | BODY | {"404"},
}
PAYMENT_METHOD_BLOCKS = {
    "card": {"number": "4111111111111111", "exp_month": 12, "exp_year": 2030},
    "bank_transfer": {"account_number": "6222000011112222"},
    "wallet": {"provider": "alipay"},
    "balance": {"account": "acct_doesnotexist"},
    "prepaid": {"code": "GIFT-0001"},
}


def is_valid(document: dict[str, Any], schema_name: str, instance: Any) -> bool:
    return bool(validator(document, schema_name).is_valid(instance))


def parameter(document: dict[str, Any], method: str, path: str, name: str) -> dict[str, Any]:
    [found] = [p for p in operations(document)[(method, path)]["parameters"] if p.get("name") == name]
    return found


def param_valid(param: dict[str, Any], value: Any) -> bool:
    return bool(jsonschema.Draft202012Validator(param["schema"]).is_valid(value))


async def test_every_route_documents_every_status_it_can_answer(document: dict[str, Any]) -> None:
    ops = operations(document)
    for route, statuses in EXPECTED_STATUSES.items():
        assert set(ops[route]["responses"]) == statuses, route
    for route, op in ops.items():
        answers = set(op["responses"])
        assert "401" not in answers, route  # no certificate: the TLS handshake fails, no HTTP answer
        assert answers >= (COMMON if route == CALLBACKS else TENANT), route
        if "requestBody" in op:
            assert answers >= BODY, route
        if route in MONEY_MOVING:
            assert answers >= KEYED, route


async def test_too_large_bodies_answer_the_documented_413(acme: Api, gw: RunningGateway) -> None:
    base = f"https://localhost:{gw.api_port}"
    for path, size in (("/v1/connectors/bank_transfer/callbacks", 65 * 1024), ("/v1/ping", 2 * 1024 * 1024)):
        # Short strings: one string over limits.input.max_json_string_bytes is a 400 of its own.
        body = orjson.dumps({"message": ["x" * 60] * (size // 60)})
        async with acme.session.post(
            base + path, data=body, headers={"Content-Type": "application/json"}
        ) as reply:
            assert reply.status == 413, path
            assert reply.content_type == "application/json"
            assert (await reply.json())["error"]["code"] == "request_too_large"


async def test_each_payment_method_type_needs_its_sub_object(acme: Api, document: dict[str, Any]) -> None:
    for kind, block in PAYMENT_METHOD_BLOCKS.items():
        bare = {"amount": 100, "currency": "CNY", "payment_method": {"type": kind}}
        assert not is_valid(document, "CreatePaymentRequest", bare), kind
        reply = await acme.post("/v1/payments", bare)
        assert reply.status == 400, (kind, reply.body)
        assert reply.body["error"]["param"] == f"payment_method.{kind}"
        assert is_valid(document, "PaymentMethodInput", {"type": kind, kind: block}), kind
        assert not is_valid(document, "PaymentMethodInput", {"type": kind, kind: None}), kind
        other = next(name for name in PAYMENT_METHOD_BLOCKS if name != kind)
        assert not is_valid(
            document, "PaymentMethodInput", {"type": kind, other: PAYMENT_METHOD_BLOCKS[other]}
        )
        # Another type's sub-object next to the right one is ignored by the server, and allowed.
        both = {"type": kind, kind: block, other: PAYMENT_METHOD_BLOCKS[other]}
        assert is_valid(document, "PaymentMethodInput", both), kind


async def test_a_card_is_a_token_or_a_number_with_its_expiry(acme: Api, document: dict[str, Any]) -> None:
    def method(card: dict[str, Any]) -> dict[str, Any]:
        return {"type": "card", "card": card}

    number = PAYMENT_METHOD_BLOCKS["card"]
    assert is_valid(document, "PaymentMethodInput", method(number))
    assert is_valid(document, "PaymentMethodInput", method({"token": "tok_abc123", "cvc": "123"}))
    assert not is_valid(document, "PaymentMethodInput", method({**number, "token": "tok_abc123"}))
    assert not is_valid(document, "PaymentMethodInput", method({"number": number["number"], "exp_month": 12}))
    assert not is_valid(document, "PaymentMethodInput", method({}))
    both = await acme.post(
        "/v1/payments",
        {"amount": 100, "currency": "CNY", "payment_method": method({**number, "token": "tok_x"})},
    )
    assert (both.status, both.body["error"]["param"]) == (400, "payment_method.card.token")
    no_expiry = await acme.post(
        "/v1/payments",
        {"amount": 100, "currency": "CNY", "payment_method": method({"number": number["number"]})},
    )
    assert (no_expiry.status, no_expiry.body["error"]["param"]) == (400, "payment_method.card.exp_month")
    # Vaulting takes a number, never a token.
    assert not is_valid(document, "CreateTokenRequest", {"card": {"token": "tok_abc123"}})
    assert is_valid(document, "CreateTokenRequest", {"card": number})
    token = await acme.post("/v1/tokens", {"card": {"token": "tok_abc123"}}, key=None)
    assert token.status == 400


async def test_topups_and_bills_state_their_own_rules(acme: Api, document: dict[str, Any]) -> None:
    account = await acme.post("/v1/accounts", {"currency": "CNY"}, key=None)
    assert account.status == 200, account.body
    wallet = {
        "amount": 100,
        "currency": "CNY",
        "payment_method": {"type": "wallet", "wallet": {"provider": "alipay"}},
    }
    assert not is_valid(document, "CreateTopupRequest", wallet)
    reply = await acme.post(f"/v1/accounts/{account.body['id']}/topups", wallet)
    assert (reply.status, reply.body["error"]["param"]) == (400, "payment_method.type")
    card = {**wallet, "payment_method": {"type": "card", "card": PAYMENT_METHOD_BLOCKS["card"]}}
    assert is_valid(document, "CreateTopupRequest", card)

    bill = {"biller": "bil_cn_power", "customer_params": {"account_number": "0031234567"}}
    manual_bill = {**card, "capture_method": "manual", "bill": bill}
    assert not is_valid(document, "CreatePaymentRequest", manual_bill)
    assert is_valid(document, "CreatePaymentRequest", {**manual_bill, "capture_method": "automatic"})
    assert is_valid(document, "CreatePaymentRequest", {**card, "capture_method": "manual"})


async def test_no_request_string_may_hold_a_control_character(acme: Api, document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]

    def unbounded_strings(schema: Any, where: str) -> list[str]:
        if isinstance(schema, list):
            return [found for item in schema for found in unbounded_strings(item, where)]
        if not isinstance(schema, dict):
            return []
        found = []
        if schema.get("type") == "string" and not {"pattern", "enum", "const"} & schema.keys():
            found.append(where)
        for key, value in schema.items():
            if key not in ("examples", "default"):
                found += unbounded_strings(value, f"{where}.{key}")
        return found

    request_schemas = [name for name in schemas if name.endswith(("Request", "Input"))]
    assert len(request_schemas) >= 10
    for name in request_schemas:
        assert unbounded_strings(schemas[name], name) == []
    payment = card_payment()
    for hostile in (
        {**payment, "description": "June\x00electricity"},
        {**payment, "metadata": {"order\x01": "A-17"}},
        {**payment, "customer": {"id": "cus_\x7f42"}},
    ):
        assert not is_valid(document, "CreatePaymentRequest", hostile)
        assert (await acme.post("/v1/payments", hostile)).status == 400
    fetch = {"biller": "bil_cn_power", "customer_params": {"account_number": "003\x001234567"}}
    assert not is_valid(document, "FetchBillsRequest", fetch)
    assert (await acme.post("/v1/bills/fetch", fetch, key=None)).status == 400


async def test_currencies_are_iso_4217_codes(acme: Api, document: dict[str, Any]) -> None:
    for name in ("CreatePaymentRequest", "CreateAccountRequest", "CreateTopupRequest"):
        currency = document["components"]["schemas"][name]["properties"]["currency"]
        assert {"CNY", "JPY", "KWD", "USD"} <= set(currency["enum"]), name
        assert "XYZ" not in currency["enum"]
    assert not is_valid(document, "CreateAccountRequest", {"currency": "XYZ"})
    reply = await acme.post("/v1/accounts", {"currency": "XYZ"}, key=None)
    assert (reply.status, reply.body["error"]["param"]) == (400, "currency")


async def test_query_and_path_parameters_state_their_bounds(acme: Api, document: dict[str, Any]) -> None:
    limit = parameter(document, "get", "/v1/payments", "limit")
    for value, valid in ((0, False), (1, True), (100, True), (101, False)):
        assert param_valid(limit, value) is valid, value
        reply = await acme.get("/v1/payments", limit=str(value))
        assert reply.status == (200 if valid else 400), value

    created = parameter(document, "get", "/v1/payments", "created_gte")
    for value, valid in (("2025-06-01T00:00:00Z", True), (1748736000, True), ("1969-12-31T00:00:00Z", False)):
        assert param_valid(created, value) is valid, value
        reply = await acme.get("/v1/payments", created_gte=str(value))
        assert reply.status == (200 if valid else 400), value

    amount = parameter(document, "get", "/v1/payments", "amount_gte")
    assert param_valid(amount, 0)
    assert not param_valid(amount, -1)
    assert not param_valid(amount, 10**12)
    assert (await acme.get("/v1/payments", amount_gte="1000000000000")).status == 400

    for path in ("/v1/payments/{id}", "/v1/accounts/{id}/entries", "/v1/billers/{id}", "/v1/events/{id}"):
        id_param = parameter(document, "get", path, "id")
        assert param_valid(id_param, "pay_1a2B3c")
        assert not param_valid(id_param, "pay_\x00")
        assert not param_valid(id_param, "pay_①")
        assert not param_valid(id_param, "..")
    assert (await acme.get("/v1/payments/pay_%00")).status == 400
    assert (await acme.get("/v1/payments/pay_doesnotexist")).status == 404

    cursor = parameter(document, "get", "/v1/events", "starting_after")
    assert not param_valid(cursor, "evt_\x00")
    assert (await acme.get("/v1/events", starting_after="evt_\x00")).status == 400

    key = document["components"]["parameters"]["Idempotency-Key"]["schema"]
    assert jsonschema.Draft202012Validator(key).is_valid("order-17")
    for bad in ("", "   ", "x" * 256, "key\x00"):
        assert not jsonschema.Draft202012Validator(key).is_valid(bad), bad


async def test_capture_and_cancel_take_an_optional_body(
    acme: Api, gw: RunningGateway, document: dict[str, Any]
) -> None:
    ops = operations(document)
    base = f"https://localhost:{gw.api_port}"
    for action in ("capture", "cancel"):
        assert ops[("post", f"/v1/payments/{{id}}/{action}")]["requestBody"]["required"] is False
        payment = await acme.post("/v1/payments", card_payment(capture_method="manual"))
        assert payment.body["status"] == "requires_capture", payment.body
        async with acme.session.post(
            f"{base}/v1/payments/{payment.body['id']}/{action}",
            headers={"Idempotency-Key": f"empty-{action}-{payment.body['id']}", "Content-Type": "text/plain"},
        ) as reply:
            assert reply.status == 200, await reply.text()
            assert_valid(document, "Payment", await reply.json())


async def test_links_name_real_operations_and_parameters(document: dict[str, Any]) -> None:
    ops = operations(document)
    by_id = {op["operationId"]: op for op in ops.values()}
    schemas = document["components"]["schemas"]
    linked = 0
    for route, op in ops.items():
        for name, link in op["responses"]["200"].get("links", {}).items():
            target = by_id[link["operationId"]]
            declared = {(p["in"], p["name"]) for p in target.get("parameters", []) if "name" in p}
            for qualified in link.get("parameters", {}):
                where, _, param = qualified.partition(".")
                assert (where, param) in declared, (route, name, qualified)
            if "requestBody" in link:
                ref = target["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                properties = schemas[ref.rsplit("/", 1)[1]]["properties"]
                assert set(link["requestBody"]) <= set(properties), (route, name)
            linked += 1
    assert linked >= 15
    created = ops[("post", "/v1/payments")]["responses"]["200"]["links"]
    assert {link["operationId"] for link in created.values()} >= {
        "getPayment", "capturePayment", "cancelPayment", "createRefund",
    }  # fmt: skip
