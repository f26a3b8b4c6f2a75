"""``/v1/billers`` and ``/v1/bills/fetch`` through the real gateway (mTLS, PostgreSQL) routed to the
biller simulators; the catalog's ``validate_payment`` that the bill-payment flow calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import jsonschema
import pytest

from config.settings import Settings
from connectors.base import Outcome
from crypto.pki import PkiPaths
from gateway import errors
from gateway.keys import METRICS
from tests.support.api import Api, api_client
from tests.support.billers import Running, biller_stack

ALL_BILLERS = {
    "bil_cn_power", "bil_cn_water", "bil_cn_gas", "bil_cn_broadband", "bil_cn_creditcard", "bil_us_power",
    "bil_cn_mobile",
}  # fmt: skip
ACCOUNT = {"account_number": "0031234567"}


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[Running]:
    async with biller_stack(settings) as stack:
        yield stack


@pytest.fixture
async def acme(running: Running, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "acme", running.gw.api_port) as api:
        yield api


def assert_valid(document: dict[str, Any], schema: str, instance: Any) -> None:
    validator = jsonschema.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    )
    problems = sorted(validator.iter_errors(instance), key=str)
    assert not problems, [f"{list(p.absolute_path)}: {p.message}" for p in problems]


def error_of(reply: Any) -> tuple[int, str, str | None]:
    return reply.status, reply.body["error"]["code"], reply.body["error"].get("param")


async def test_catalog_lists_gets_and_filters(acme: Api) -> None:
    document = (await acme.get("/v1/openapi.json")).body
    listed = await acme.get("/v1/billers")
    assert listed.status == 200, listed.body
    assert (listed.body["object"], listed.body["has_more"], listed.body["url"]) == (
        "list",
        False,
        "/v1/billers",
    )
    assert {b["id"] for b in listed.body["data"]} == ALL_BILLERS
    assert_valid(document, "BillerList", listed.body)
    by_id = {b["id"]: b for b in listed.body["data"]}
    assert by_id["bil_cn_power"]["customer_params"] == [
        {
            "name": "account_number",
            "regex": "^[0-9]{10}$",
            "description": by_id["bil_cn_power"]["customer_params"][0]["description"],
        }
    ]
    mobile = by_id["bil_cn_mobile"]
    assert (mobile["category"], mobile["fetch"], mobile["denominations"]) == (
        "telecom_prepaid", "none", [1000, 3000, 5000, 10000],
    )  # fmt: skip
    assert mobile["customer_params"][0]["name"] == "msisdn"
    assert by_id["bil_us_power"]["currency"] == "USD"
    assert by_id["bil_cn_creditcard"]["fetch"] == "optional"

    one = await acme.get("/v1/billers/bil_cn_broadband")
    assert one.status == 200
    assert one.body == by_id["bil_cn_broadband"]
    assert_valid(document, "Biller", one.body)
    assert error_of(await acme.get("/v1/billers/bil_nowhere")) == (404, "resource_missing", "id")

    electricity = await acme.get("/v1/billers", category="electricity")
    assert {b["id"] for b in electricity.body["data"]} == {"bil_cn_power", "bil_us_power"}
    us = await acme.get("/v1/billers", country="US")
    assert [b["id"] for b in us.body["data"]] == ["bil_us_power"]
    assert error_of(await acme.get("/v1/billers", category="pets")) == (400, "parameter_invalid", "category")
    first = await acme.get("/v1/billers", limit="2")
    assert (len(first.body["data"]), first.body["has_more"]) == (2, True)
    rest = await acme.get("/v1/billers", starting_after=first.body["data"][-1]["id"], limit="10")
    assert {b["id"] for b in first.body["data"] + rest.body["data"]} == ALL_BILLERS
    assert rest.body["has_more"] is False


async def test_fetch_bills(acme: Api, running: Running) -> None:
    document = (await acme.get("/v1/openapi.json")).body
    fetched = await acme.post(
        "/v1/bills/fetch", {"biller": "bil_cn_power", "customer_params": ACCOUNT}, key=None
    )
    assert fetched.status == 200, fetched.body
    assert (fetched.body["object"], fetched.body["has_more"]) == ("list", False)
    [bill] = fetched.body["data"]
    assert bill["object"] == "bill"
    assert bill["biller"] == "bil_cn_power"
    assert bill["amount_due"] > 0
    assert bill["currency"] == "CNY"
    assert bill["customer_name"].count("*") >= 1
    assert set(bill) == {
        "object",
        "bill_ref",
        "biller",
        "amount_due",
        "currency",
        "due_date",
        "customer_name",
    }
    assert_valid(document, "BillList", fetched.body)

    # Fetching again within 30 s is answered from the cache: no second query to the biller.
    queries = running.gw.api[METRICS].connector_calls.labels("utility_biller", "query", "ok")
    before = queries._value.get()
    again = await acme.post(
        "/v1/bills/fetch", {"biller": "bil_cn_power", "customer_params": ACCOUNT}, key=None
    )
    assert again.body == fetched.body
    assert queries._value.get() == before

    none = await acme.post(
        "/v1/bills/fetch",
        {"biller": "bil_cn_water", "customer_params": {"account_number": "0031230000"}},
        key=None,
    )
    assert error_of(none) == (404, "bill_not_found", "customer_params.account_number")
    assert none.body["error"]["type"] == "invalid_request_error"
    assert_valid(document, "ErrorResponse", none.body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"biller": "bil_cn_power", "customer_params": {"account_number": "003123456"}},
            (400, "parameter_invalid", "customer_params.account_number"),
        ),
        (
            {"biller": "bil_cn_power", "customer_params": {"account_number": 31234567}},
            (400, "parameter_invalid", "customer_params.account_number"),
        ),
        (
            {"biller": "bil_cn_power", "customer_params": {}},
            (400, "parameter_missing", "customer_params.account_number"),
        ),
        (
            {"biller": "bil_cn_power", "customer_params": {**ACCOUNT, "pin": "1234"}},
            (400, "parameter_unknown", "customer_params.pin"),
        ),
        ({"biller": "bil_cn_power"}, (400, "parameter_missing", "customer_params")),
        ({"biller": "bil_nowhere", "customer_params": ACCOUNT}, (404, "resource_missing", "biller")),
        (
            {"biller": "bil_cn_mobile", "customer_params": {"msisdn": "+8613800138000"}},
            (400, "fetch_not_supported", "biller"),
        ),
    ],
)
async def test_fetch_refusals_name_the_parameter(
    acme: Api, body: dict[str, Any], expected: tuple[int, str, str]
) -> None:
    assert error_of(await acme.post("/v1/bills/fetch", body, key=None)) == expected


async def test_biller_down_answers_503(acme: Api, running: Running) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{running.utility_port}/faults"
        async with session.post(url, json={"error_rate": 1.0}) as reply:
            assert reply.status == 200
    down = await acme.post(
        "/v1/bills/fetch",
        {"biller": "bil_cn_gas", "customer_params": {"account_number": "0071234567"}},
        key=None,
    )
    assert error_of(down) == (503, "biller_unavailable", None)
    assert down.headers["Retry-After"] == "5"


async def test_validate_payment_then_post(running: Running) -> None:
    """The bill-payment flow's checks before collecting, and the posting after it."""
    catalog = running.catalog

    async def refused(**kwargs: Any) -> tuple[int, str, str | None]:
        args: dict[str, Any] = {
            "biller_id": "bil_cn_broadband",
            "customer_params": ACCOUNT,
            "amount": 100,
            "currency": "CNY",
            "bill_ref": None,
            "tenant": "acme",
        }
        with pytest.raises(errors.ApiError) as caught:
            await catalog.validate_payment(**(args | kwargs))
        return caught.value.status, caught.value.code, caught.value.param

    [bill] = await catalog.fetch("acme", "bil_cn_broadband", ACCOUNT)
    assert await refused() == (400, "parameter_missing", "bill.bill_ref")
    assert await refused(bill_ref="nope") == (404, "bill_not_found", "bill.bill_ref")
    assert await refused(bill_ref=bill.bill_ref, amount=bill.amount_due + 1) == (
        400,
        "amount_not_allowed",
        "amount",
    )
    assert await refused(bill_ref=bill.bill_ref, currency="USD") == (400, "parameter_invalid", "currency")
    assert await refused(biller_id="bil_nowhere") == (404, "resource_missing", "bill.biller")
    assert await refused(customer_params={"account_number": "1"}) == (
        400, "parameter_invalid", "bill.customer_params.account_number",
    )  # fmt: skip
    assert await refused(customer_params={"account_number": "0031230000"}, bill_ref="x") == (
        404, "bill_not_found", "bill.customer_params.account_number",
    )  # fmt: skip
    mobile = {"biller_id": "bil_cn_mobile", "customer_params": {"msisdn": "+8613800138000"}}
    assert await refused(**mobile, amount=2500) == (400, "amount_not_allowed", "amount")
    assert await refused(**mobile, amount=3000, bill_ref="x") == (400, "parameter_invalid", "bill.bill_ref")
    no_operator = {"biller_id": "bil_cn_mobile", "customer_params": {"msisdn": "+8613800000000"}}
    assert await refused(**no_operator, amount=3000) == (
        400,
        "parameter_invalid",
        "bill.customer_params.msisdn",
    )

    # Accepted: exact_or_above takes more than due; any-amount credit cards need no bill.
    [power] = await catalog.fetch("acme", "bil_cn_power", ACCOUNT)
    checked = await catalog.validate_payment(
        "bil_cn_power", ACCOUNT, power.amount_due + 100, "CNY", power.bill_ref, tenant="acme"
    )
    assert checked.bill == power
    assert checked.connector_name == "utility_biller"
    card = await catalog.validate_payment("bil_cn_creditcard", ACCOUNT, 1, "CNY", None, tenant="acme")
    assert card.bill is None

    # … money collected here by the payment flow; then the posting, keyed on the attempt id.
    posting = await checked.connector.pay(
        checked.payment(attempt_id="att_api_test_1", payment_id="pay_api_test_1")
    )
    assert posting.outcome is Outcome.SUCCEEDED
    topup = await catalog.validate_payment(
        "bil_cn_mobile", {"msisdn": "+8613800138000"}, 5000, "CNY", None, tenant="acme"
    )
    assert topup.customer_params == {"msisdn": "+8613800138000"}
    done = await topup.connector.pay(topup.payment(attempt_id="att_api_test_2", payment_id="pay_api_test_2"))
    assert done.outcome is Outcome.SUCCEEDED
