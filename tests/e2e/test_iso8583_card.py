"""ISO 8583 card connector against the sandbox acquirer over real TCP, then the whole gateway on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest

from config.settings import ConnectorSettings, Settings
from connectors.base import ConnectorUnavailable, Outcome, OutcomeUnknown
from connectors.breaker import CircuitState
from connectors.iso8583_card import transformers as wire
from connectors.iso8583_card.client import Iso8583CardConnector
from connectors.sandbox.acquirer import AcquirerSimulator
from crypto.pki import PkiPaths
from gateway.metrics import Metrics
from tests.support.acquirer import acquirer, card_connector, card_request
from tests.support.api import Api, api_client, card_payment
from tests.support.mtls import gateway


@pytest.fixture
async def sim() -> AsyncIterator[AcquirerSimulator]:
    async with acquirer(slow_delay=0.3) as simulator:
        yield simulator


@pytest.fixture
async def card(sim: AcquirerSimulator) -> AsyncIterator[Iso8583CardConnector]:
    async with card_connector(sim.port) as connector:
        yield connector


def calls(metrics: Metrics, operation: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "payhub_connector_calls_total",
        {"connector": "iso8583_card", "operation": operation, "outcome": outcome},
    )
    return value or 0.0


def state(card: Iso8583CardConnector) -> CircuitState:
    return card.breaker.state


def connected(card: Iso8583CardConnector) -> bool:
    return card.connected


# ---- the connector alone ------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["4111111111111111", "5555555555554444", "6212345678901265"])
async def test_approved_purchase(sim: AcquirerSimulator, card: Iso8583CardConnector, number: str) -> None:
    result = await card.authorize(card_request("att_ok", number, amount=12850))
    assert result.outcome is Outcome.SUCCEEDED
    assert (result.amount_authorized, result.amount_captured) == (12850, 12850)
    assert result.reference == wire.rrn_for("att_ok")
    assert sim.received["0200"] == 1
    charge = sim.book[result.reference]
    assert (charge.kind, charge.status, charge.charged, charge.currency) == (
        "purchase",
        "captured",
        12850,
        "CNY",
    )
    assert charge.last4 == number[-4:]


@pytest.mark.parametrize(
    ("number", "decline_code", "raw_code"),
    [
        ("4000000000000002", "do_not_honor", "05"),
        ("4000000000009995", "insufficient_funds", "51"),
        ("4000000000000069", "expired_card", "54"),
        ("4000000000000127", "incorrect_cvc", "N7"),
        ("4111111111111112", "card_declined", "14"),  # fails the Luhn check
    ],
)
async def test_declines(
    sim: AcquirerSimulator, card: Iso8583CardConnector, number: str, decline_code: str, raw_code: str
) -> None:
    result = await card.authorize(card_request("att_decline", number))
    assert (result.outcome, result.decline_code, result.raw_code) == (Outcome.FAILED, decline_code, raw_code)
    assert sim.book[wire.rrn_for("att_decline")].charged == 0
    assert card.breaker.state is CircuitState.CLOSED  # a decline is a healthy answer


async def test_a_retried_attempt_is_answered_from_the_book_without_a_second_charge(
    sim: AcquirerSimulator, card: Iso8583CardConnector
) -> None:
    first = await card.authorize(card_request("att_twice", amount=500))
    second = await card.authorize(card_request("att_twice", amount=500))
    assert first == second
    assert sim.received["0200"] == 2
    assert len(sim.book) == 1
    assert sim.book[first.reference or ""].captured == 500


async def test_manual_capture_authorizes_then_captures_by_advice(
    sim: AcquirerSimulator, card: Iso8583CardConnector
) -> None:
    authorized = await card.authorize(card_request("att_auth", amount=10000, capture=False))
    assert authorized.outcome is Outcome.SUCCEEDED
    assert (authorized.amount_authorized, authorized.amount_captured) == (10000, 0)
    assert sim.received["0100"] == 1
    assert authorized.reference is not None
    assert sim.book[authorized.reference].held == 10000
    captured = await card.capture(
        attempt_id="att_cap", reference=authorized.reference, amount=6000, currency="CNY"
    )
    assert (captured.outcome, captured.amount_captured) == (Outcome.SUCCEEDED, 6000)
    assert sim.received["0220"] == 1
    charge = sim.book[authorized.reference]
    assert (charge.status, charge.captured, charge.held) == ("captured", 6000, 0)
    again = await card.capture(
        attempt_id="att_cap", reference=authorized.reference, amount=6000, currency="CNY"
    )
    assert again == captured  # the same advice is answered once
    second = await card.capture(
        attempt_id="att_cap2", reference=authorized.reference, amount=1000, currency="CNY"
    )
    assert (second.outcome, second.raw_code) == (Outcome.FAILED, "12")
    assert sim.book[authorized.reference].captured == 6000


async def test_void_reverses_the_authorization(sim: AcquirerSimulator, card: Iso8583CardConnector) -> None:
    authorized = await card.authorize(card_request("att_auth", capture=False))
    assert authorized.reference is not None
    voided = await card.void(attempt_id="att_void", reference=authorized.reference)
    assert voided.outcome is Outcome.SUCCEEDED
    assert sim.received["0400"] == 1
    charge = sim.book[authorized.reference]
    assert (charge.status, charge.reversals, charge.held, charge.charged) == ("reversed", 1, 0, 0)
    late = await card.capture(attempt_id="att_cap", reference=authorized.reference, amount=1, currency="CNY")
    assert late.outcome is Outcome.FAILED


async def test_refunds_never_exceed_the_capture(sim: AcquirerSimulator, card: Iso8583CardConnector) -> None:
    paid = await card.authorize(card_request("att_pay", amount=5000))
    assert paid.reference is not None
    refund = await card.refund(attempt_id="att_re1", reference=paid.reference, amount=3000, currency="CNY")
    assert refund.outcome is Outcome.SUCCEEDED
    assert refund.reference == wire.rrn_for("att_re1")
    assert sim.book[refund.reference].kind == "refund"
    too_much = await card.refund(attempt_id="att_re2", reference=paid.reference, amount=2001, currency="CNY")
    assert (too_much.outcome, too_much.decline_code) == (Outcome.FAILED, "amount_not_allowed")
    rest = await card.refund(attempt_id="att_re3", reference=paid.reference, amount=2000, currency="CNY")
    assert rest.outcome is Outcome.SUCCEEDED
    assert (sim.book[paid.reference].refunded, sim.book[paid.reference].charged) == (5000, 0)
    assert sim.received["0200"] == 4
    assert "2" not in str(sim.book[refund.reference].last4 or "")
    records = {r.rrn: r for r in sim.daily_records(datetime.now(UTC).date())}
    assert (records[paid.reference].status, records[paid.reference].amount) == ("captured", 5000)
    assert (records[refund.reference].status, records[refund.reference].amount) == ("refunded", 3000)


async def test_an_unanswered_authorization_is_reversed_and_never_charged(
    sim: AcquirerSimulator,
) -> None:
    metrics = Metrics()
    async with card_connector(sim.port, metrics=metrics, read_timeout=0.3) as card:
        started = time.monotonic()
        result = await card.authorize(card_request("att_silent", "4000000000000119", amount=7700))
        elapsed = time.monotonic() - started
        assert (result.outcome, result.decline_code) == (Outcome.FAILED, "connector_unavailable")
        assert 0.3 <= elapsed < 1.0
        rrn = wire.rrn_for("att_silent")
        assert result.reference == rrn
        assert sim.received["0400"] == 1 and sim.received["0401"] == 0
        charge = sim.book[rrn]
        assert (charge.reversals, charge.status, charge.charged, charge.held) == (1, "reversed", 0, 0)
        assert calls(metrics, "authorize", "reversed") == 1
        # Asked later, the acquirer confirms: reversed, never charged.
        inquiry = await card.sync(attempt_id="att_silent", operation="authorize")
        assert (inquiry.outcome, inquiry.decline_code) == (Outcome.FAILED, "connector_unavailable")


async def test_a_lost_answer_is_settled_by_sync_without_a_second_charge(sim: AcquirerSimulator) -> None:
    async with card_connector(sim.port, read_timeout=0.2) as card:
        await _lost_answer_then_sync(sim, card)


async def _lost_answer_then_sync(sim: AcquirerSimulator, card: Iso8583CardConnector) -> None:
    sim.lose_next_answers["0200"] = 1  # charged, answer lost on the way back
    sim.ignore_next["0400"] = 3  # and the reversals never arrive
    with pytest.raises(OutcomeUnknown):
        await card.authorize(card_request("att_lost", amount=4200))
    assert sim.received["0400"] + sim.received["0401"] == 3
    rrn = wire.rrn_for("att_lost")
    assert sim.book[rrn].charged == 4200
    settled = await card.sync(attempt_id="att_lost", operation="authorize")
    assert settled.outcome is Outcome.SUCCEEDED
    assert (settled.reference, settled.amount_authorized, settled.amount_captured) == (rrn, 4200, 4200)
    assert await card.sync(attempt_id="att_lost", operation="authorize") == settled
    assert len(sim.book) == 1
    assert sim.book[rrn].captured == 4200


async def test_sync_of_an_attempt_that_never_arrived_closes_its_rrn(
    sim: AcquirerSimulator, card: Iso8583CardConnector
) -> None:
    sim.drop_rate = 1.0  # the acquirer cuts the link on every message: nothing is processed
    with pytest.raises(OutcomeUnknown):
        await card.authorize(card_request("att_dropped"))
    sim.drop_rate = 0.0
    assert sim.book == {}
    result = await card.sync(attempt_id="att_dropped", operation="authorize")
    assert (result.outcome, result.decline_code, result.raw_code) == (
        Outcome.FAILED,
        "connector_unavailable",
        "25",
    )
    # A late copy of the original can no longer charge after "unknown" was answered.
    late = await card.authorize(card_request("att_dropped"))
    assert late.outcome is Outcome.FAILED
    assert sim.book == {}
    assert card.sign_ons >= 2  # reconnected after every cut


async def test_fifty_concurrent_authorizations_share_one_connection(
    sim: AcquirerSimulator, card: Iso8583CardConnector
) -> None:
    # A few slow cards among them make answers come back out of order.
    requests = [
        card_request(f"att_{i}", "4000000000000259" if i % 10 == 0 else "4111111111111111", amount=1000 + i)
        for i in range(50)
    ]
    results = await asyncio.gather(*(card.authorize(r) for r in requests))
    for request, result in zip(requests, results, strict=True):
        assert result.outcome is Outcome.SUCCEEDED
        assert result.reference == wire.rrn_for(request.attempt_id)
        assert result.amount_authorized == request.amount
    assert sim.connections == 1
    assert sim.received["0200"] == 50


async def test_the_slow_card_blocks_nobody() -> None:
    async with acquirer() as sim, card_connector(sim.port, read_timeout=10.0) as card:
        started = time.monotonic()
        slow = asyncio.create_task(card.authorize(card_request("att_slow", "4000000000000259")))
        await asyncio.sleep(0.05)
        fast = await asyncio.gather(*(card.authorize(card_request(f"att_f{i}")) for i in range(10)))
        assert all(r.outcome is Outcome.SUCCEEDED for r in fast)
        assert time.monotonic() - started < 1.0
        assert not slow.done()
        result = await slow
        assert result.outcome is Outcome.SUCCEEDED
        assert 2.9 <= time.monotonic() - started < 4.5
        assert sim.received["0400"] == 0


async def test_circuit_breaker_opens_when_the_acquirer_is_down_and_recovers() -> None:
    metrics = Metrics()
    gauge = {"connector": "iso8583_card"}
    async with acquirer() as first:
        port = first.port
        async with card_connector(port, metrics=metrics, breaker_failures=3, breaker_reset=0.4) as card:
            assert (await card.authorize(card_request("att_0"))).outcome is Outcome.SUCCEEDED
            await first.close()  # stopped: connections refused
            for i in range(3):
                with pytest.raises(ConnectorUnavailable, match="cannot connect"):
                    await card.authorize(card_request(f"att_down{i}"))
            assert state(card) is CircuitState.OPEN
            assert metrics.registry.get_sample_value("payhub_connector_circuit_state", gauge) == 2
            with pytest.raises(ConnectorUnavailable, match="circuit open"):
                await card.authorize(card_request("att_fast_fail"))
            assert calls(metrics, "authorize", "circuit_open") == 1
            async with acquirer(port) as second:
                await asyncio.sleep(0.45)
                result = await card.authorize(card_request("att_back"))
                assert result.outcome is Outcome.SUCCEEDED
                assert state(card) is CircuitState.CLOSED
                assert metrics.registry.get_sample_value("payhub_connector_circuit_state", gauge) == 0
                assert set(second.book) == {wire.rrn_for("att_back")}
                assert second.network["001"] >= 1  # signed on again


async def test_sign_on_echo_and_reconnect() -> None:
    async with acquirer() as first:
        port = first.port
        async with card_connector(port, options={"echo_interval": "0.15"}) as card:
            assert first.network["001"] == 1
            assert connected(card)
            await asyncio.sleep(0.5)
            assert first.network["301"] >= 2
            assert card.echoes >= 2
            await first.close()
            async with acquirer(port) as second:
                for _ in range(100):  # the supervisor reconnects (back-off) with no traffic at all
                    if connected(card):
                        break
                    await asyncio.sleep(0.05)
                assert second.network["001"] == 1
                assert connected(card)
                assert (await card.authorize(card_request("att_after"))).outcome is Outcome.SUCCEEDED


def test_create_uses_the_sandbox_port_unless_an_endpoint_is_configured() -> None:
    from connectors.registry import REGISTRY, _resolve

    settings = Settings()
    assert REGISTRY["iso8583_card"] == "connectors.iso8583_card.client:Iso8583CardConnector"
    deps = type("Deps", (), {"settings": settings, "metrics": Metrics()})()
    cls = _resolve("iso8583_card")
    default = cls.create("iso8583_card", ConnectorSettings(), deps)
    assert (default._host, default._port) == (settings.sandbox.host, settings.sandbox.acquirer)
    assert default.methods == frozenset({"card"})
    custom = cls.create("iso8583_card", ConnectorSettings(endpoint="10.0.0.7:5000"), deps)
    assert (custom._host, custom._port) == ("10.0.0.7", 5000)


# ---- the whole gateway routing cards to the acquirer ----------------------------------------------


@pytest.fixture
async def card_stack(settings: Settings, pki: PkiPaths) -> AsyncIterator[tuple[Api, AcquirerSimulator]]:
    async with acquirer() as sim:
        stack = msgspec.structs.replace(
            settings,
            routing=msgspec.structs.replace(settings.routing, card=["iso8583_card"]),
            sandbox=msgspec.structs.replace(settings.sandbox, acquirer=sim.port),
            connectors={**settings.connectors, "iso8583_card": ConnectorSettings(read_timeout=0.5)},
        )
        async with gateway(stack) as running, api_client(pki, "acme", running.api_port) as api:
            yield api, sim


async def test_gateway_card_payments_over_iso8583(card_stack: tuple[Api, AcquirerSimulator]) -> None:
    api, sim = card_stack
    paid = await api.post("/v1/payments", card_payment("4111111111111111", amount=12850))
    assert paid.status == 200, paid.body
    assert (paid.body["status"], paid.body["connector"]) == ("succeeded", "iso8583_card")
    assert sim.book[paid.body["connector_reference"]].charged == 12850
    for number, code in [
        ("4000000000000002", "do_not_honor"),
        ("4000000000009995", "insufficient_funds"),
        ("4000000000000069", "expired_card"),
        ("4000000000000127", "incorrect_cvc"),
    ]:
        declined = await api.post("/v1/payments", card_payment(number))
        assert declined.status == 200, declined.body
        assert (declined.body["status"], declined.body["failure"]["code"]) == ("failed", code)
    silent = await api.post("/v1/payments", card_payment("4000000000000119", amount=999))
    assert silent.status == 200, silent.body
    assert (silent.body["status"], silent.body["failure"]["code"]) == ("failed", "connector_unavailable")
    [charge] = [c for c in sim.book.values() if c.last4 == "0119"]
    assert (charge.reversals, charge.charged, charge.held) == (1, 0, 0)
    assert sum(c.charged for c in sim.book.values()) == 12850


async def test_gateway_manual_capture_and_refund_over_iso8583(
    card_stack: tuple[Api, AcquirerSimulator],
) -> None:
    api, sim = card_stack
    created = await api.post("/v1/payments", card_payment(amount=10000, capture_method="manual"))
    assert created.body["status"] == "requires_capture", created.body
    rrn = created.body["connector_reference"]
    assert (sim.book[rrn].kind, sim.book[rrn].held) == ("authorization", 10000)
    captured = await api.post(f"/v1/payments/{created.body['id']}/capture", {"amount_to_capture": 6000})
    assert captured.status == 200, captured.body
    assert (captured.body["status"], captured.body["amount_captured"]) == ("succeeded", 6000)
    assert sim.book[rrn].captured == 6000
    refund = await api.post("/v1/refunds", {"payment": created.body["id"], "amount": 2500})
    assert refund.status == 200, refund.body
    assert refund.body["status"] == "succeeded"
    assert (sim.book[rrn].refunded, sim.book[rrn].charged) == (2500, 3500)
    canceled = await api.post("/v1/payments", card_payment(capture_method="manual"))
    cancel = await api.post(f"/v1/payments/{canceled.body['id']}/cancel", {})
    assert cancel.body["status"] == "canceled"
    assert sim.book[canceled.body["connector_reference"]].status == "reversed"


async def test_gateway_settles_a_lost_answer_by_inquiry_and_charges_once(
    card_stack: tuple[Api, AcquirerSimulator],
) -> None:
    api, sim = card_stack
    sim.lose_next_answers["0200"] = 1  # charged at the acquirer, the answer lost
    sim.ignore_next["0400"] = 3  # and no reversal gets through
    created = await api.post("/v1/payments", card_payment(amount=4321))
    assert created.status == 200, created.body
    assert created.body["status"] == "processing"
    payment = created
    for _ in range(60):  # the resolver asks the acquirer by RRN (first after ~1 s)
        payment = await api.get(f"/v1/payments/{created.body['id']}")
        if payment.body["status"] != "processing":
            break
        await asyncio.sleep(0.1)
    assert (payment.body["status"], payment.body["amount_captured"]) == ("succeeded", 4321)
    [charge] = sim.book.values()
    assert (charge.rrn, charge.charged) == (payment.body["connector_reference"], 4321)
    assert sim.received["0200"] == 1  # the inquiry is an 0100; nothing was charged twice


async def test_gateway_settles_a_refund_whose_answer_was_lost(
    card_stack: tuple[Api, AcquirerSimulator],
) -> None:
    api, sim = card_stack
    paid = await api.post("/v1/payments", card_payment(amount=8000))
    assert paid.body["status"] == "succeeded", paid.body
    # The refund happens at the acquirer and every answer to it (and to its repeats) is lost.
    sim.lose_next_answers["0200"] = 10
    sim.lose_next_answers["0201"] = 10
    refund = await api.post("/v1/refunds", {"payment": paid.body["id"], "amount": 3000})
    sim.lose_next_answers.clear()
    assert refund.status == 200, refund.body
    assert refund.body["status"] == "pending"
    for _ in range(60):  # the resolver asks the acquirer by RRN
        await asyncio.sleep(0.1)
        refund = await api.get(f"/v1/refunds/{refund.body['id']}")
        if refund.body["status"] != "pending":
            break
    assert refund.body["status"] == "succeeded"
    payment = await api.get(f"/v1/payments/{paid.body['id']}")
    assert payment.body["amount_refunded"] == 3000
    assert sim.book[paid.body["connector_reference"]].refunded == 3000  # refunded once
