"""Builders for risk tests: an ordinary small payment, and the same with one thing changed."""

from __future__ import annotations

import dataclasses
from typing import Any

from risk.features import History, KeyKind, PaymentFacts, Velocity, VelocityCell, Window, build_features
from risk.geo import StaticIpCountries

IP_COUNTRIES = StaticIpCountries()

# DESIGN §6's example payment: 128.50 CNY (about 17.80 USD) by a returning customer on a known device.
ORDINARY = PaymentFacts(
    tenant="acme",
    amount=12850,
    currency="CNY",
    amount_usd=17.8,
    method="card",
    card_bin="621234",
    card_brand="unionpay",
    customer_id="cus_42",
    email="li@example.com",
    phone="+8613800138000",
    ip="203.0.113.7",
    device_id="dev_9",
)
RETURNING = History(customer_age_days=120, device_known=True)


def features(
    *,
    velocity: dict[tuple[KeyKind, Window], VelocityCell] | None = None,
    history: History = RETURNING,
    **facts: Any,
) -> dict[str, Any]:
    """The ordinary payment's features, with *facts* fields replaced."""
    return build_features(
        dataclasses.replace(ORDINARY, **facts), Velocity(velocity or {}), history, IP_COUNTRIES
    )
