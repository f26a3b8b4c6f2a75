"""Checks every payment-moving request passes before anything is claimed or stored."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.base import CardData
from crypto.cards import card_brand, luhn_valid
from gateway import errors
from gateway.domain.money import MoneyError, check_amount, normalize_currency
from gateway.logs import mask_pans
from gateway.store.risk import StoredFeatures
from gateway.views import schemas


@dataclass(frozen=True, slots=True)
class PreparedMethod:
    """What the connector needs (in memory only) and what may be stored and shown."""

    display: dict[str, Any]
    card: CardData | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None  # a card's keyed HMAC (hex): its velocity key, never the PAN
    risk_read: StoredFeatures | None = None  # the risk feature read, when it rode in the vault's statement


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
            raise _refuse_card_number(param)


def _refuse_card_number(param: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"{param} looks like it contains a card number; card data goes in payment_method.card only.",
        param=param,
    )


def check_customer(customer: schemas.CustomerInput | None) -> None:
    """The fields with a shape of their own. ``ip`` is stored in its normal form, which can hold no
    card number. A phone is refused only when it is a plausible card (known IIN, card length, Luhn):
    the free-text rule would refuse one real 13-15 digit phone number in ten."""
    if customer is None:
        return
    if customer.ip is not None:
        try:
            customer.ip = str(ipaddress.ip_address(customer.ip))
        except ValueError as exc:
            raise errors.InvalidRequest(
                "customer.ip must be an IPv4 or IPv6 address.", param="customer.ip"
            ) from exc
    phone = customer.phone.removeprefix("+") if customer.phone else ""
    if len(phone) >= 13 and luhn_valid(phone) and card_brand(phone) != "unknown":
        raise _refuse_card_number("customer.phone")


def free_text(params: schemas.CreatePaymentRequest | schemas.CreateTopupRequest) -> dict[str, str | None]:
    """Every stored or shown free-text field of a payment or top-up, by its param name."""
    fields: dict[str, str | None] = {"description": params.description}
    card = params.payment_method.card
    if card is not None:
        fields["payment_method.card.holder_name"] = card.holder_name
    bank = params.payment_method.bank_transfer
    if bank is not None:
        fields["payment_method.bank_transfer.holder_name"] = bank.holder_name
    if isinstance(params, schemas.CreateTopupRequest):
        return fields
    customer = params.customer
    if customer is not None:
        fields |= {
            "customer.id": customer.id,
            "customer.email": customer.email,
            "customer.device_id": customer.device_id,
        }
    return fields | metadata_text(params.metadata)


def metadata_text(metadata: Mapping[str, str]) -> dict[str, str | None]:
    # Key and value together: a PAN split across them is still a PAN in the stored object.
    return {f"metadata.{key}": f"{key} {value}" for key, value in metadata.items()}


def method_block(method: schemas.PaymentMethodInput) -> Any:
    block = getattr(method, method.type)
    if block is None:
        raise errors.InvalidRequest(
            f"payment_method.{method.type} is required when payment_method.type is '{method.type}'.",
            code="parameter_missing",
            param=f"payment_method.{method.type}",
        )
    return block
