"""Hostile and odd input over real mTLS against real PostgreSQL: a 400 naming the ``param`` for any
shape of bad input, never a 5xx, and a refused or failed request never burns its Idempotency-Key.
(The attack matrix in tests/security counts the same classes across every route.)"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

import gateway.services.payments as payments_service
from tests.support.api import Api, card_payment

NUL = "\u0000"


def assert_refused(reply: Any, param: str, status: int = 400) -> None:
    assert reply.status == status, (reply.status, reply.body)
    error = reply.body["error"]
    assert error["type"] == "invalid_request_error", error
    assert error["param"] == param, error


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"description": f"June{NUL}"}, "description"),
        ({"description": "two\nlines"}, "description"),
        ({"description": "trailing newline\n"}, "description"),
        ({"metadata": {f"or{NUL}der": "A-17"}}, "metadata"),
        ({"metadata": {"order": f"A{NUL}17"}}, "metadata.order"),
        ({"customer": {"id": f"cus{NUL}42"}}, "customer.id"),
        ({"customer": {"device_id": "dev\x1b[31m"}}, "customer.device_id"),
        ({"customer": {"ip": "203.0.113.700"}}, "customer.ip"),
        ({"customer": {"ip": "not-an-ip"}}, "customer.ip"),
        ({"customer": {"phone": "+4222222222222"}}, "customer.phone"),  # a 13-digit Visa test number
        ({"customer": {"email": f"li{NUL}@example.com"}}, "customer.email"),
    ],
)
async def test_control_characters_and_odd_customer_fields_are_a_400_and_free_the_key(
    acme: Api, change: dict[str, Any], param: str
) -> None:
    key = "hostile-" + secrets.token_hex(6)
    refused = await acme.post("/v1/payments", card_payment(**change), key=key)
    assert_refused(refused, param)
    fixed = await acme.post("/v1/payments", card_payment(), key=key)
    assert fixed.status == 200, fixed.body


async def test_a_real_phone_and_an_ipv6_address_pass_and_the_ip_is_stored_in_normal_form(acme: Api) -> None:
    customer = {"id": "cus_1", "phone": "+8613800138000", "ip": "2001:DB8:0:0::7"}
    reply = await acme.post("/v1/payments", card_payment(customer=customer))
    assert reply.status == 200, reply.body
    assert reply.body["customer"]["ip"] == "2001:db8::7"


async def test_nul_in_the_card_holder_name_is_refused(acme: Api) -> None:
    body = card_payment()
    body["payment_method"]["card"]["holder_name"] = f"Li{NUL}Lei"
    assert_refused(await acme.post("/v1/payments", body), "payment_method.card.holder_name")


async def test_nul_in_account_and_refund_strings_is_refused(acme: Api) -> None:
    assert_refused(await acme.post("/v1/accounts", {"currency": "CNY", "customer": f"c{NUL}"}), "customer")
    paid = await acme.post("/v1/payments", card_payment())
    body = {"payment": paid.body["id"], "metadata": {"why": f"x{NUL}"}}
    assert_refused(await acme.post("/v1/refunds", body), "metadata.why")


@pytest.mark.parametrize("amount", [100.0, 12850.000])
async def test_an_integral_json_number_is_an_integer_amount(acme: Api, amount: float) -> None:
    reply = await acme.post("/v1/payments", card_payment(amount=amount))
    assert reply.status == 200, reply.body
    assert reply.body["amount"] == int(amount)


@pytest.mark.parametrize("amount", [100.5, 0, -1, 100_000_000_000, "100", True])
async def test_amounts_outside_the_documented_range_or_type_are_refused(acme: Api, amount: Any) -> None:
    assert_refused(await acme.post("/v1/payments", card_payment(amount=amount)), "amount")


@pytest.mark.parametrize("amount", [b"1e400", b"123456789012345678901234567890", b"-0.0"])
async def test_huge_numbers_in_raw_json_are_refused_naming_the_amount(acme: Api, amount: bytes) -> None:
    body = b'{"amount": ' + amount + b', "currency": "CNY", "payment_method": {"type": "bank_transfer"}}'
    headers = {"Idempotency-Key": "raw-" + secrets.token_hex(4), "Content-Type": "application/json"}
    async with acme.session.post(f"{acme.base}/v1/payments", data=body, headers=headers) as resp:
        error = (await resp.json())["error"]
    assert (resp.status, error["param"]) == (400, "amount"), error


@pytest.mark.parametrize(
    "path",
    [
        "/v1/payments/pay_%00",
        "/v1/payments/pay_%00/capture",
        "/v1/payments/pay_%00/cancel",
        "/v1/refunds/re_%00",
        "/v1/accounts/acct_%00",
        "/v1/accounts/acct_%00/entries",
        "/v1/accounts/acct_%00/topups",
        "/v1/events/evt_%00",
        "/v1/payments/pay_%C2%B2",
        "/v1/payments/pay_%E2%91%A0",
    ],
)
async def test_a_control_or_non_ascii_character_in_a_path_id_is_a_400_naming_it(acme: Api, path: str) -> None:
    method = "POST" if path.endswith(("capture", "cancel", "topups")) else "GET"
    reply = await acme.request(
        method, path, {} if method == "POST" else None, key="k-" + secrets.token_hex(4)
    )
    assert_refused(reply, "id")


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("/v1/payments", "starting_after"),
        ("/v1/payments", "ending_before"),
        ("/v1/payments", "customer"),
        ("/v1/payments", "biller"),
        ("/v1/events", "type"),
        ("/v1/events", "object"),
        ("/v1/events", "starting_after"),
        ("/v1/events", "ending_before"),
    ],
)
async def test_nul_in_a_query_parameter_is_a_400_naming_it(acme: Api, path: str, param: str) -> None:
    assert_refused(await acme.get(path, **{param: f"x{NUL}y"}), param)


async def entries_path(acme: Api) -> tuple[str, str]:
    account = await acme.post("/v1/accounts", {"currency": "CNY", "customer": "cus_7"})
    topup = {
        "amount": 5000,
        "currency": "CNY",
        "payment_method": card_payment()["payment_method"],
    }
    assert (await acme.post(f"/v1/accounts/{account.body['id']}/topups", topup)).status == 200
    path = f"/v1/accounts/{account.body['id']}/entries"
    entries = await acme.get(path)
    return path, entries.body["data"][0]["id"]


@pytest.mark.parametrize(
    "cursor", ["le_²", "le_①", "le_٣", "①", "le_\uff11", "le_" + "9" * 30, "le_9223372036854775808"]
)
async def test_an_entries_cursor_with_odd_digits_or_out_of_range_is_a_400(acme: Api, cursor: str) -> None:
    path, _ = await entries_path(acme)
    assert_refused(await acme.get(path, starting_after=cursor), "starting_after")


@pytest.mark.parametrize("cursor", ["le_999999", "12", "le_", "pay_123"])
async def test_an_unknown_entries_cursor_is_a_404_as_on_every_list(acme: Api, cursor: str) -> None:
    path, _ = await entries_path(acme)
    assert_refused(await acme.get(path, ending_before=cursor), "ending_before", status=404)


async def test_a_cursor_of_another_account_is_unknown(acme: Api) -> None:
    path, mine = await entries_path(acme)
    other_path, _ = await entries_path(acme)
    assert_refused(await acme.get(other_path, starting_after=mine), "starting_after", status=404)
    assert (await acme.get(path, starting_after=mine)).status == 200


async def test_capture_and_cancel_take_an_empty_body_whatever_its_content_type(acme: Api) -> None:
    held = await acme.post("/v1/payments", card_payment(capture_method="manual"))
    assert held.body["status"] == "requires_capture", held.body
    url = f"{acme.base}/v1/payments/{held.body['id']}/capture"
    headers = {"Idempotency-Key": "empty-" + secrets.token_hex(4), "Content-Type": "text/plain"}
    async with acme.session.post(url, data=b"", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "succeeded"


async def test_405_names_the_allowed_methods(acme: Api) -> None:
    reply = await acme.request("DELETE", "/v1/payments")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET, HEAD, POST"


async def test_a_failure_in_the_hub_releases_the_key_instead_of_burning_it(
    acme: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = payments_service.intake  # a card payment's first statement (claim, vault, payment)

    async def fails_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(payments_service, "intake", real)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(payments_service, "intake", fails_once)
    key = "hub-failure-" + secrets.token_hex(4)
    failed = await acme.post("/v1/payments", card_payment(description="first"), key=key)
    assert failed.status == 500
    assert failed.body["error"]["type"] == "api_error"
    corrected = await acme.post("/v1/payments", card_payment(description="second"), key=key)
    assert corrected.status == 200, corrected.body
    assert corrected.body["description"] == "second"
