"""Checks every payment-moving request passes before anything is claimed or stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.base import CardData
from gateway import errors
from gateway.domain.money import MoneyError, check_amount, normalize_currency
from gateway.logs import mask_pans
from gateway.views import schemas


@dataclass(frozen=True, slots=True)
class PreparedMethod:
    """What the connector needs (in memory only) and what may be stored and shown."""

    display: dict[str, Any]
    card: CardData | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


def money(amount: int, currency: str) -> tuple[int, str]:
    try:
        return check_amount(amount), normalize_currency(currency)
    except MoneyError as exc:
        raise errors.InvalidRequest(str(exc), param=exc.param) from exc


def refuse_card_numbers(fields: Mapping[str, str | None]) -> None:
    """Free-text fields are stored, shown and sent in webhooks in clear: a card number there would
    leak the PAN past the vault, so such a request is refused (400) before anything is stored."""
    for param, value in fields.items():
        if value and mask_pans(value) != value:
            raise errors.InvalidRequest(
                f"{param} looks like it contains a card number; card data goes in payment_method.card only.",
                param=param,
            )


def free_text(params: schemas.CreatePaymentRequest) -> dict[str, str | None]:
    customer = params.customer
    fields: dict[str, str | None] = {"description": params.description}
    if customer is not None:
        fields |= {
            "customer.id": customer.id,
            "customer.email": customer.email,
            "customer.device_id": customer.device_id,
        }
    card = params.payment_method.card
    if card is not None:
        fields["payment_method.card.holder_name"] = card.holder_name
    for key, value in params.metadata.items():
        fields[f"metadata.{key}"] = f"{key} {value}"
    return fields


def method_block(method: schemas.PaymentMethodInput) -> Any:
    block = getattr(method, method.type)
    if block is None:
        raise errors.InvalidRequest(
            f"payment_method.{method.type} is required when payment_method.type is '{method.type}'.",
            code="parameter_missing",
            param=f"payment_method.{method.type}",
        )
    return block
