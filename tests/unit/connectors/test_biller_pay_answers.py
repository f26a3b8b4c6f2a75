"""What a biller's answer to ``pay`` means when it is not one of the documented ones (issue 9).

A pay whose request was written may have posted: any answer the connector cannot read as a
documented refusal is ``OutcomeUnknown`` (the posting stays pending, the status inquiry settles it),
never a definite failure (which refunds money that may have reached the biller). Only a pay that
provably sent nothing (refused connection, connect timeout) is ``ConnectorUnavailable``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from config.settings import ConnectorSettings
from connectors.base import BillPayment, ConnectorUnavailable, Outcome, OutcomeUnknown
from connectors.http import OutboundClient
from connectors.telecom_topup import TelecomTopupConnector
from connectors.telecom_topup import transformers as telecom_wire
from connectors.utility_biller import UtilityBillerConnector
from gateway.metrics import Metrics
from tests.unit.connectors.peers import StubPeer

SECRET = b"unit-telecom-secret"
UNMAPPED = [204, 401, 403, 404, 408, 429, 500, 503]
CONFIG = ConnectorSettings(connect_timeout=0.3, read_timeout=2.0)


@pytest.fixture(scope="module")
def keys() -> tuple[RSAPrivateKey, RSAPrivateKey]:
    """(the hub's key, the biller's key): generated once, RSA generation is the slow part."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
async def outbound() -> AsyncIterator[OutboundClient]:
    async with aiohttp.ClientSession() as session:
        yield OutboundClient(session, Metrics())


def telecom_at(endpoint: str, http: OutboundClient) -> TelecomTopupConnector:
    return TelecomTopupConnector("telecom_topup", CONFIG, http, endpoint=endpoint, secret=SECRET)


def utility_at(
    endpoint: str, http: OutboundClient, keys: tuple[RSAPrivateKey, RSAPrivateKey]
) -> UtilityBillerConnector:
    hub, biller = keys
    return UtilityBillerConnector(
        "utility_biller",
        CONFIG,
        http,
        endpoint=endpoint,
        merchant_id="payhub_unit",
        private_key=hub,
        biller_key=biller.public_key(),
    )


def topup(reference: str) -> BillPayment:
    return BillPayment(
        attempt_id=reference,
        payment_id="pay_" + reference,
        biller="bil_cn_mobile",
        customer_params={"msisdn": "+8613800138000"},
        amount=1000,
        currency="CNY",
    )


def bill(reference: str) -> BillPayment:
    return BillPayment(
        attempt_id=reference,
        payment_id="pay_" + reference,
        biller="bil_cn_creditcard",  # no bill to fetch first, any amount
        customer_params={"account_number": "0031234567"},
        amount=100,
        currency="CNY",
    )


@pytest.mark.parametrize("status", UNMAPPED)
async def test_telecom_unmapped_answer_to_a_topup_is_unknown(
    stub_peer: StubPeer, outbound: OutboundClient, status: int
) -> None:
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):
        await telecom_at(stub_peer.url, outbound).pay(topup("att_t_unmapped"))
    assert b"att_t_unmapped" in stub_peer.seen[0][2]  # the aggregator did get it


async def test_telecom_signed_refusal_with_an_unknown_code_stays_pending(
    stub_peer: StubPeer, outbound: OutboundClient
) -> None:
    stub_peer.status = 429
    stub_peer.body = b'{"error": "rate_limited", "message": "slow down"}'
    stub_peer.headers[telecom_wire.SIGNATURE_HEADER] = telecom_wire.sign(SECRET, stub_peer.body)
    posting = await telecom_at(stub_peer.url, outbound).pay(topup("att_t_code"))
    assert (posting.outcome, posting.code) == (Outcome.PENDING, "unknown_code:rate_limited")


@pytest.mark.parametrize("status", UNMAPPED)
async def test_utility_unmapped_answer_to_a_pay_is_unknown(
    stub_peer: StubPeer,
    outbound: OutboundClient,
    keys: tuple[RSAPrivateKey, RSAPrivateKey],
    status: int,
) -> None:
    stub_peer.status = status
    with pytest.raises(OutcomeUnknown):
        await utility_at(stub_peer.url, outbound, keys).pay(bill("att_u_unmapped"))
    assert b"att_u_unmapped" in stub_peer.seen[0][2]


async def test_a_pay_that_sent_nothing_is_unavailable(
    closed_port: int,
    unanswered_port: int,
    outbound: OutboundClient,
    keys: tuple[RSAPrivateKey, RSAPrivateKey],
) -> None:
    for port in (closed_port, unanswered_port):
        with pytest.raises(ConnectorUnavailable):
            await telecom_at(f"http://127.0.0.1:{port}", outbound).pay(topup(f"att_t_{port}"))
        with pytest.raises(ConnectorUnavailable):
            await utility_at(f"http://127.0.0.1:{port}", outbound, keys).pay(bill(f"att_u_{port}"))
