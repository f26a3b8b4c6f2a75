"""risk.features: the CEL activation always has every key, with typed zeros for "absent"."""

from __future__ import annotations

from typing import Any

import cel
import pytest

from risk.features import KEY_KINDS, WINDOWS, History, PaymentFacts, Velocity, VelocityCell, build_features
from tests.unit.risk.risk_payments import IP_COUNTRIES, features

CELL = {"count": int, "amount_usd": float, "declines": int, "distinct_msisdn": int}
SHAPE: dict[str, Any] = {
    "tenant": str,
    "amount": int,
    "currency": str,
    "amount_usd": float,
    "has_usd_rate": bool,
    "method": str,
    "biller": str,
    "msisdn": str,
    "card": {"bin": str, "brand": str, "country": str},
    "ip": {"address": str, "country": str},
    "phone": {"country": str},
    "customer": {"id": str, "email": str, "age_days": int, "new": bool},
    "device": {"id": str, "new": bool},
    "countries_mismatch": bool,
    "velocity": {kind: {window: CELL for window in WINDOWS} for kind in KEY_KINDS},
    "otp_failures_24h": int,
    "lists": {"deny": bool, "allow": bool, "deny_hits": list, "allow_hits": list},
}

BARE = PaymentFacts(tenant="acme", amount=100, currency="USD", amount_usd=None, method="wallet")


def _check_shape(value: Any, shape: Any, where: str = "features") -> None:
    if isinstance(shape, dict):
        assert isinstance(value, dict), where
        assert set(value) == set(shape), where
        for key, sub in shape.items():
            _check_shape(value[key], sub, f"{where}.{key}")
    else:
        # type() not isinstance(): a bool where an int belongs would be a different CEL type.
        assert type(value) is shape, f"{where} is {type(value).__name__}, not {shape.__name__}"


@pytest.mark.parametrize(
    "built",
    [
        build_features(BARE, Velocity.empty(), History(), IP_COUNTRIES),
        features(),
        features(
            history=History(3, True, 2, ("ip:198.51.100.66",), ("customer:cus_42",)), msisdn="+8613800138001"
        ),
    ],
    ids=["bare", "ordinary", "busy"],
)
def test_every_key_is_present_with_its_type(built: dict[str, Any]) -> None:
    _check_shape(built, SHAPE)


def test_absent_facts_read_as_typed_zeros() -> None:
    built = build_features(BARE, Velocity.empty(), History(), IP_COUNTRIES)
    assert built["amount_usd"] == 0.0
    assert built["has_usd_rate"] is False
    assert built["card"] == {"bin": "", "brand": "", "country": ""}
    assert built["customer"] == {"id": "", "email": "", "age_days": -1, "new": True}
    assert built["device"] == {"id": "", "new": False}
    assert built["velocity"]["ip"]["h1"] == {
        "count": 0,
        "amount_usd": 0.0,
        "declines": 0,
        "distinct_msisdn": 0,
    }
    assert built["lists"] == {"deny": False, "allow": False, "deny_hits": [], "allow_hits": []}


def test_rules_on_absent_values_do_not_error() -> None:
    built = build_features(BARE, Velocity.empty(), History(), IP_COUNTRIES)
    program = cel.compile('card.country != ip.country && customer.age_days < 1 && device.id == ""')
    assert program.execute(built) is False


def test_int_amounts_become_doubles() -> None:
    built = features(amount_usd=2000, velocity={("card", "d1"): VelocityCell(amount_usd=3)})  # type: ignore[arg-type]
    assert type(built["amount_usd"]) is float
    assert type(built["velocity"]["card"]["d1"]["amount_usd"]) is float
    assert cel.compile("amount_usd >= 2000.0").execute(built) is True


@pytest.mark.parametrize(
    ("device_id", "known", "new"),
    [("dev_9", True, False), ("dev_9", False, True), (None, False, False), ("", False, False)],
)
def test_device_new_needs_a_device_id(device_id: str | None, known: bool, new: bool) -> None:
    assert features(device_id=device_id, history=History(5, device_known=known))["device"]["new"] is new


@pytest.mark.parametrize(
    ("card_bin", "ip", "phone", "mismatch"),
    [
        ("621234", "203.0.113.7", "+8613800138000", False),  # CN, CN, CN
        ("411111", "203.0.113.7", "+8613800138000", True),  # US card in CN
        ("621234", "198.51.100.7", None, True),  # two known, different
        ("424242", "198.51.100.7", None, False),  # only the IP is known
        (None, None, "+14155552671", False),
        ("411111", "198.51.100.7", "+14155552671", False),  # US, US, US
    ],
)
def test_countries_mismatch(card_bin: str | None, ip: str | None, phone: str | None, mismatch: bool) -> None:
    built = features(card_bin=card_bin, ip=ip, phone=phone)
    assert built["countries_mismatch"] is mismatch


def test_countries_come_from_the_geo_tables() -> None:
    built = features(card_bin="411111", ip="198.51.100.66", phone="+442071838750")
    assert (built["card"]["country"], built["ip"]["country"], built["phone"]["country"]) == ("US", "US", "GB")


def test_velocity_cells_land_in_their_place() -> None:
    velocity = Velocity(
        {("msisdn", "d1"): VelocityCell(count=3, amount_usd=30.0, declines=1, distinct_msisdn=1)}
    )
    assert velocity.get("msisdn", "d1").count == 3
    assert velocity.get("ip", "m1") == VelocityCell()
    built = features(velocity=dict(velocity.cells))
    assert built["velocity"]["msisdn"]["d1"] == {
        "count": 3,
        "amount_usd": 30.0,
        "declines": 1,
        "distinct_msisdn": 1,
    }
    assert built["velocity"]["msisdn"]["h1"]["count"] == 0


def test_lists_and_history() -> None:
    history = History(0, False, 4, ("email:fraud@example.com",), ())
    built = features(history=history)
    assert built["lists"]["deny"] is True
    assert built["lists"]["deny_hits"] == ["email:fraud@example.com"]
    assert built["customer"]["age_days"] == 0
    assert built["customer"]["new"] is False
    assert built["otp_failures_24h"] == 4
