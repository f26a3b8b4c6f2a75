"""Connector registry: names → classes, resolved and validated once at start-up.

Every connector class offers ``create(name, config, deps)``; connectors that hold connections
(ISO 8583 keeps one open to the acquirer) also offer ``start()`` and ``close()``. A routing
rule or a biller naming an unknown, disabled or ill-typed connector stops start-up with a
message naming it, instead of failing on the first payment.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from config.settings import ConfigError, ConnectorSettings, Settings
from connectors.base import BillerConnector, PaymentConnector
from connectors.http import OutboundClient
from gateway.metrics import Metrics

# name → "module:Class". A new connector is one line here plus its package (docs/connectors.md).
REGISTRY: Mapping[str, str] = {
    "inprocess": "connectors.inprocess:InProcessConnector",
    "utility_biller": "connectors.utility_biller:UtilityBillerConnector",
    "telecom_topup": "connectors.telecom_topup:TelecomTopupConnector",
    "iso8583_card": "connectors.iso8583_card.client:Iso8583CardConnector",
    "bank_transfer": "connectors.bank_transfer:BankTransferConnector",
    "ewallet": "connectors.ewallet:EwalletConnector",
}


@dataclass(frozen=True)
class ConnectorDeps:
    settings: Settings
    http: OutboundClient
    metrics: Metrics


@runtime_checkable
class Managed(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass
class Connectors:
    payment: dict[str, PaymentConnector] = field(default_factory=dict)
    billers: dict[str, BillerConnector] = field(default_factory=dict)
    managed: list[Managed] = field(default_factory=list)

    async def start(self) -> None:
        for connector in self.managed:
            await connector.start()

    async def close(self) -> None:
        for connector in reversed(self.managed):
            await connector.close()


def _resolve(name: str) -> Any:
    path = REGISTRY.get(name)
    if path is None:
        raise ConfigError(f"unknown connector '{name}' (known: {', '.join(sorted(REGISTRY))})")
    module_name, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_connectors(settings: Settings, deps: ConnectorDeps) -> Connectors:
    """Instantiate every connector that routing or the biller list needs; validate the wiring."""
    wanted: set[str] = {
        name
        for method in ("card", "bank_transfer", "wallet", "prepaid")
        for name in settings.routing.for_method(method)
    }
    wanted |= {name for name, config in settings.connectors.items() if config.enabled}
    built = Connectors()
    for name in sorted(wanted):
        config = settings.connectors.get(name, ConnectorSettings())
        if not config.enabled:
            raise ConfigError(f"routing uses connector '{name}', which is disabled in [connectors.{name}]")
        connector = _resolve(name).create(name, config, deps)
        if isinstance(connector, PaymentConnector):
            built.payment[name] = connector
        if isinstance(connector, BillerConnector):
            built.billers[name] = connector
        if not isinstance(connector, PaymentConnector | BillerConnector):
            raise ConfigError(f"connector '{name}' implements neither PaymentConnector nor BillerConnector")
        if isinstance(connector, Managed):
            built.managed.append(connector)
    for method in ("card", "bank_transfer", "wallet", "prepaid"):
        for name in settings.routing.for_method(method):
            connector = built.payment.get(name)
            if connector is None or method not in connector.methods:
                raise ConfigError(f"routing.{method}: connector '{name}' does not take {method} payments")
    return built
