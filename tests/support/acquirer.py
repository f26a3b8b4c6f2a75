"""The sandbox acquirer and the ISO 8583 connector, in-process on an ephemeral port (real TCP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from config.settings import ConnectorSettings
from connectors.base import CardData, PaymentRequest
from connectors.iso8583_card.client import Iso8583CardConnector
from connectors.sandbox.acquirer import SLOW_DELAY, AcquirerSimulator
from gateway.metrics import Metrics

# Short enough to keep the suite fast, long enough for a loaded CI box to answer on loopback.
FAST_READ_TIMEOUT = 0.5


@asynccontextmanager
async def acquirer(port: int = 0, *, slow_delay: float = SLOW_DELAY) -> AsyncIterator[AcquirerSimulator]:
    simulator = AcquirerSimulator("127.0.0.1", port, slow_delay=slow_delay)
    await simulator.open()
    try:
        yield simulator
    finally:
        await simulator.close()


@asynccontextmanager
async def card_connector(
    port: int, *, metrics: Metrics | None = None, **config: Any
) -> AsyncIterator[Iso8583CardConnector]:
    options = config.pop("options", {})
    settings = ConnectorSettings(**{"read_timeout": FAST_READ_TIMEOUT, **config}, options=options)
    connector = Iso8583CardConnector(
        "iso8583_card",
        settings,
        host="127.0.0.1",
        port=port,
        metrics=metrics or Metrics(),
        echo_interval=float(options.get("echo_interval", 30.0)),
    )
    await connector.start()
    try:
        yield connector
    finally:
        await connector.close()


def card_request(
    attempt_id: str,
    number: str = "4111111111111111",
    *,
    amount: int = 12850,
    currency: str = "CNY",
    capture: bool = True,
    cvc: str | None = "123",
    tenant: str = "acme",
) -> PaymentRequest:
    return PaymentRequest(
        attempt_id=attempt_id,
        payment_id="pay_" + attempt_id,
        tenant=tenant,
        amount=amount,
        currency=currency,
        method="card",
        capture=capture,
        card=CardData(number, 12, 2030, cvc, "Li Lei"),
    )
