"""``/v1/customers/{id}/preferences``: defaults, whole-object replace, validation naming the field,
tenant scoping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from crypto.pki import PkiPaths
from gateway.server import RunningGateway
from tests.support.api import Api, api_client

PATH = "/v1/customers/{}/preferences"

FULL = {
    "locale": "zh-CN",
    "timezone": "Asia/Shanghai",
    "default_currency": "cny",
    "channels": ["sms", "email", "push"],
    "email": "li@example.com",
    "phone": "+8613800138000",
    "quiet_hours": {"start": "22:00", "end": "07:00"},
    "reminder_lead_days": 5,
    "theme": "dark",
    "font_scale": 1.25,
}


@pytest.fixture
async def globex(gw: RunningGateway, pki: PkiPaths) -> AsyncIterator[Api]:
    async with api_client(pki, "globex", gw.api_port) as api:
        yield api


async def put(api: Api, customer: str, body: Any) -> Any:
    return await api.request("PUT", PATH.format(customer), body)


async def test_a_customer_never_set_has_the_defaults(acme: Api) -> None:
    reply = await acme.get(PATH.format("cus_new"))
    assert reply.status == 200, reply.body
    assert reply.body == {
        "customer": "cus_new",
        "locale": "en",
        "timezone": "UTC",
        "default_currency": None,
        "channels": ["webhook"],
        "email": None,
        "phone": None,
        "quiet_hours": None,
        "reminder_lead_days": 3,
        "theme": "system",
        "font_scale": 1.0,
        "updated": None,
        "object": "customer_preferences",
    }


async def test_put_replaces_the_whole_object_and_get_reads_it_back(acme: Api) -> None:
    saved = await put(acme, "cus_p1", FULL)
    assert saved.status == 200, saved.body
    body = saved.body
    assert body["default_currency"] == "CNY"
    assert body["channels"] == ["webhook", "email", "push", "sms"]
    assert body["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    assert body["updated"] is not None
    read = await acme.get(PATH.format("cus_p1"))
    assert read.body == body
    shown = {k: v for k, v in read.body.items() if k not in ("customer", "updated", "object")}
    again = await put(acme, "cus_p1", shown)
    assert again.status == 200, again.body  # what GET shows can be PUT back (webhook included)
    # PUT is a replace: what is left out goes back to its default.
    partial = await put(acme, "cus_p1", {"timezone": "Europe/Berlin"})
    assert partial.status == 200, partial.body
    assert partial.body["timezone"] == "Europe/Berlin"
    assert partial.body["locale"] == "en"
    assert partial.body["channels"] == ["webhook"]
    assert partial.body["quiet_hours"] is None
    assert partial.body["reminder_lead_days"] == 3


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"locale": "en_US"}, "locale"),
        ({"locale": "xx-YY"}, "locale"),
        ({"locale": ""}, "locale"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"default_currency": "XYZ"}, "default_currency"),
        ({"channels": ["fax"]}, "channels.0"),
        ({"phone": "+1234"}, "phone"),
        ({"phone": "+10000000000"}, "phone"),
        ({"phone": "8613800138000"}, "phone"),
        ({"email": "not-an-address"}, "email"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        ({"quiet_hours": {"start": "22:00", "end": "7:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00"}}, "quiet_hours.end"),
        ({"quiet_hours": {"start": "22:00", "end": "22:00"}}, "quiet_hours.end"),
        ({"reminder_lead_days": 61}, "reminder_lead_days"),
        ({"reminder_lead_days": -1}, "reminder_lead_days"),
        ({"theme": "blue"}, "theme"),
        ({"font_scale": 2.5}, "font_scale"),
        ({"font_scale": 0.5}, "font_scale"),
        ({"font_scale": "big"}, "font_scale"),
        ({"colour": "red"}, "colour"),
        ({"channels": ["sms"], "phone": None}, "phone"),
        ({"channels": ["email"], "email": None}, "email"),
    ],
)
async def test_bad_values_are_400_naming_the_field(acme: Api, change: dict[str, Any], param: str) -> None:
    reply = await put(acme, "cus_bad", FULL | change)
    assert reply.status == 400, reply.body
    assert reply.body["error"]["param"] == param, reply.body
    assert reply.body["error"]["type"] == "invalid_request_error"
    assert (await acme.get(PATH.format("cus_bad"))).body["updated"] is None  # nothing stored


async def test_bodies_of_the_wrong_shape_are_400(acme: Api) -> None:
    for body in ([], "x", 7, {"channels": "sms"}):
        reply = await put(acme, "cus_shape", body)
        assert reply.status == 400, (body, reply.body)
    too_long = "c" * 65
    assert (await acme.get(PATH.format(too_long))).body["error"]["param"] == "id"


async def test_preferences_are_the_tenants_own(acme: Api, globex: Api) -> None:
    assert (await put(acme, "cus_shared", FULL)).status == 200
    theirs = await globex.get(PATH.format("cus_shared"))
    assert theirs.status == 200
    assert theirs.body["updated"] is None  # globex's cus_shared is another customer
    assert theirs.body["locale"] == "en"
