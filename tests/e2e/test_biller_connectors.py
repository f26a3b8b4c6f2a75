"""Biller connectors against their simulators over real sockets: DESIGN §12 outcomes, signatures both
ways, idempotency, reversal, reconciliation; telecom lookup, denominations and top-ups."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from config.settings import ConnectorSettings, SandboxSettings, ServerSettings, Settings
from connectors.base import (
    AmountNotAllowed,
    BillPayment,
    ConnectorUnavailable,
    DuplicateReference,
    InvalidParams,
    NoDues,
    Outcome,
    OutcomeUnknown,
    ServiceWindowClosed,
    SignatureError,
)
from connectors.http import OutboundClient
from connectors.registry import ConnectorDeps
from connectors.sandbox import telecom as telecom_sandbox
from connectors.sandbox import utility as utility_sandbox
from connectors.sandbox.common import HttpSimulator
from connectors.telecom_topup import TelecomTopupConnector
from connectors.utility_biller import UtilityBillerConnector
from connectors.utility_biller.client import dev_keys
from gateway.metrics import Metrics

READ_TIMEOUT = 1.0
SECRET = "test-telecom-secret"


def port_of(simulator: HttpSimulator) -> int:
    return int(simulator.runner.addresses[0][1])


@dataclass
class Sandbox:
    settings: Settings
    utility: utility_sandbox.UtilityState
    telecom: telecom_sandbox.TelecomState
    deps: ConnectorDeps


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("billers")
    dev_keys(path / "keys")  # once per module: RSA key generation is the slow part
    return path


@pytest.fixture
async def sandbox(home: Path) -> AsyncIterator[Sandbox]:
    settings = Settings(
        server=ServerSettings(home=str(home)),
        sandbox=SandboxSettings(utility=0, telecom=0),
        connectors={
            "utility_biller": ConnectorSettings(read_timeout=READ_TIMEOUT),
            "telecom_topup": ConnectorSettings(secret=SECRET),
        },
    )
    utility = await utility_sandbox.start(settings)
    telecom = await telecom_sandbox.start(settings)
    ports = msgspec.structs.replace(settings.sandbox, utility=port_of(utility), telecom=port_of(telecom))
    settings = msgspec.structs.replace(settings, sandbox=ports)
    try:
        async with aiohttp.ClientSession() as session:
            metrics = Metrics()
            yield Sandbox(
                settings,
                utility.runner.app[utility_sandbox.UTILITY_STATE],
                telecom.runner.app[telecom_sandbox.TELECOM_STATE],
                ConnectorDeps(settings, OutboundClient(session, metrics), metrics),
            )
    finally:
        await telecom.close()
        await utility.close()


def utility_connector(sandbox: Sandbox, **options: str) -> UtilityBillerConnector:
    config = msgspec.structs.replace(sandbox.settings.connectors["utility_biller"], options=options)
    return UtilityBillerConnector.create("utility_biller", config, sandbox.deps)


def telecom_connector(sandbox: Sandbox, secret: str = SECRET) -> TelecomTopupConnector:
    config = msgspec.structs.replace(sandbox.settings.connectors["telecom_topup"], secret=secret)
    return TelecomTopupConnector.create("telecom_topup", config, sandbox.deps)


_counter = iter(range(1, 1_000_000))


def attempt() -> str:
    return f"att_{time.time_ns()}{next(_counter)}"


def bill_payment(
    account: str,
    amount: int,
    *,
    biller: str = "bil_cn_power",
    bill_ref: str | None = None,
    currency: str = "CNY",
) -> BillPayment:
    return BillPayment(
        attempt_id=attempt(),
        payment_id="pay_test",
        biller=biller,
        customer_params={"account_number": account},
        amount=amount,
        currency=currency,
        bill_ref=bill_ref,
    )


# ---- utility biller -----------------------------------------------------------------------------


async def test_describe_lists_the_six_utility_billers(sandbox: Sandbox) -> None:
    infos = await utility_connector(sandbox).describe()
    assert {i.id for i in infos} == {
        "bil_cn_power", "bil_cn_water", "bil_cn_gas", "bil_cn_broadband", "bil_cn_creditcard", "bil_us_power",
    }  # fmt: skip
    by_id = {i.id: i for i in infos}
    assert by_id["bil_cn_creditcard"].fetch == "optional"
    assert by_id["bil_cn_broadband"].amount_exactness == "exact"
    assert by_id["bil_us_power"].currency == "USD"
    assert all(i.customer_params[0].regex == "^[0-9]{10}$" for i in infos)


async def test_query_answers_one_open_bill_due_in_ten_days(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    [bill] = await connector.fetch_bills("bil_cn_power", {"account_number": "0031234567"})
    today_cn = utility_sandbox.settlement_day("CN_POWER")
    assert bill.amount_due > 0
    assert bill.currency == "CNY"
    assert bill.due_date in (today_cn + timedelta(days=10), today_cn + timedelta(days=11))
    assert re.fullmatch(r"\S\*( \S\*)*", bill.customer_name), bill.customer_name  # "L* L*"
    [usd] = await connector.fetch_bills("bil_us_power", {"account_number": "0031234567"})
    assert usd.currency == "USD"
    with pytest.raises(NoDues):
        await connector.fetch_bills("bil_cn_water", {"account_number": "0031230000"})
    with pytest.raises(InvalidParams):
        await connector.fetch_bills("bil_cn_water", {"account_number": "003123456"})  # refused before sending


async def test_pay_status_replay_and_reversal_of_a_normal_account(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    [bill] = await connector.fetch_bills("bil_cn_power", {"account_number": "0031234567"})
    payment = bill_payment("0031234567", bill.amount_due, bill_ref=bill.bill_ref)
    posted = await connector.pay(payment)
    assert posted.outcome is Outcome.SUCCEEDED
    assert posted.biller_reference
    assert await connector.status(attempt_id=payment.attempt_id, biller="bil_cn_power") == posted

    again = await connector.pay(payment)  # a retry of the same attempt: the original answer
    assert (again.outcome, again.biller_reference) == (Outcome.SUCCEEDED, posted.biller_reference)
    with pytest.raises(DuplicateReference):  # the same reference for another payment
        await connector.pay(dataclasses.replace(payment, amount=bill.amount_due + 1))

    reversed_ = await connector.reverse(attempt_id=payment.attempt_id, biller="bil_cn_power")
    assert (reversed_.outcome, reversed_.code) == (Outcome.FAILED, "reversed")
    status = await connector.status(attempt_id=payment.attempt_id, biller="bil_cn_power")
    assert (status.outcome, status.code) == (Outcome.FAILED, "reversed")
    again_reversed = await connector.reverse(attempt_id=payment.attempt_id, biller="bil_cn_power")
    assert again_reversed.code == "reversed"


async def test_design_accounts_at_posting(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    with pytest.raises(NoDues):
        await connector.pay(bill_payment("0031230000", 5000, biller="bil_cn_creditcard"))

    [bill] = await connector.fetch_bills("bil_cn_gas", {"account_number": "0031239999"})
    rejected = bill_payment("0031239999", bill.amount_due, biller="bil_cn_gas", bill_ref=bill.bill_ref)
    posting = await connector.pay(rejected)
    assert (posting.outcome, posting.code) == (Outcome.FAILED, "biller_rejected")
    status = await connector.status(attempt_id=rejected.attempt_id, biller="bil_cn_gas")
    assert (status.outcome, status.code) == (Outcome.FAILED, "biller_rejected")
    cannot = await connector.reverse(attempt_id=rejected.attempt_id, biller="bil_cn_gas")
    assert cannot.outcome is Outcome.FAILED  # nothing was posted, nothing to give back

    [bill] = await connector.fetch_bills("bil_cn_power", {"account_number": "0031237777"})
    slow = bill_payment("0031237777", bill.amount_due, bill_ref=bill.bill_ref)
    started = time.perf_counter()
    with pytest.raises(OutcomeUnknown):
        await connector.pay(slow)
    assert time.perf_counter() - started < READ_TIMEOUT + 1.0
    later = await connector.status(attempt_id=slow.attempt_id, biller="bil_cn_power")
    assert later.outcome is Outcome.SUCCEEDED


async def test_amount_rules_per_biller(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    account = {"account_number": "0035550001"}
    [broadband] = await connector.fetch_bills("bil_cn_broadband", account)
    with pytest.raises(AmountNotAllowed):  # exact
        await connector.pay(
            bill_payment(
                "0035550001", broadband.amount_due + 1, biller="bil_cn_broadband", bill_ref=broadband.bill_ref
            )
        )
    [power] = await connector.fetch_bills("bil_cn_power", account)
    with pytest.raises(AmountNotAllowed):  # exact_or_above
        await connector.pay(bill_payment("0035550001", power.amount_due - 1, bill_ref=power.bill_ref))
    above = await connector.pay(bill_payment("0035550001", power.amount_due + 500, bill_ref=power.bill_ref))
    assert above.outcome is Outcome.SUCCEEDED
    with pytest.raises(InvalidParams):  # fetch required: no bill_ref
        await connector.pay(bill_payment("0035550001", power.amount_due))
    with pytest.raises(InvalidParams):  # a bill_ref that is not the account's open bill
        await connector.pay(
            bill_payment("0035550001", power.amount_due, bill_ref="CN_POWER-190001-0035550001")
        )
    card = await connector.pay(bill_payment("0035550001", 1, biller="bil_cn_creditcard"))  # any, min 1
    assert card.outcome is Outcome.SUCCEEDED
    with pytest.raises(InvalidParams):  # refused before sending: the US biller is paid in USD
        await connector.pay(bill_payment("0035550001", 100, biller="bil_us_power", currency="CNY"))


async def test_unknown_references_and_reversal_before_arrival(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    unknown = attempt()
    status = await connector.status(attempt_id=unknown, biller="bil_cn_power")
    assert (status.outcome, status.code) == (Outcome.PENDING, "reference_not_found")
    # 冲正 of a payment that never arrived is recorded, so the original cannot land afterwards.
    tombstone = await connector.reverse(attempt_id=unknown, biller="bil_cn_power")
    assert (tombstone.outcome, tombstone.code) == (Outcome.FAILED, "reversed")
    [bill] = await connector.fetch_bills("bil_cn_power", {"account_number": "0031234567"})
    late = dataclasses.replace(
        bill_payment("0031234567", bill.amount_due, bill_ref=bill.bill_ref), attempt_id=unknown
    )
    posting = await connector.pay(late)
    assert (posting.outcome, posting.code) == (Outcome.FAILED, "reversed")


async def test_signatures_are_checked_both_ways(sandbox: Sandbox, home: Path, tmp_path: Path) -> None:
    # 1. Our request signed with a key the biller does not know: refused, nothing posted.
    stranger = tmp_path / "stranger.pem"
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    stranger.chmod(0o600)
    impostor = utility_connector(
        sandbox,
        private_key=str(stranger),
        biller_public_key=str(home / "keys" / "sandbox" / "utility_biller.pub"),
    )
    with pytest.raises(SignatureError):
        await impostor.fetch_bills("bil_cn_power", {"account_number": "0031234567"})
    refused = bill_payment("0031234567", 10, biller="bil_cn_creditcard")
    with pytest.raises(SignatureError):
        await impostor.pay(refused)
    assert refused.attempt_id not in sandbox.utility.postings

    # 2. The biller's answers altered after signing: refused; for a pay, the outcome is unknown.
    connector = utility_connector(sandbox)
    sandbox.utility.tamper_answers = True
    with pytest.raises(SignatureError):
        await connector.fetch_bills("bil_cn_power", {"account_number": "0031234567"})
    paid = bill_payment("0031234567", 10, biller="bil_cn_creditcard")
    with pytest.raises(OutcomeUnknown):
        await connector.pay(paid)
    with pytest.raises(SignatureError):
        await connector.settlement_report(
            "bil_cn_creditcard", utility_sandbox.settlement_day("CN_CREDITCARD")
        )
    sandbox.utility.tamper_answers = False
    status = await connector.status(attempt_id=paid.attempt_id, biller="bil_cn_creditcard")
    assert status.outcome is Outcome.SUCCEEDED  # why "unknown" and not "failed": it was posted


async def test_reconciliation_file_lists_the_days_postings(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    day_before = utility_sandbox.settlement_day("CN_WATER")
    made = []
    for account in ("0041110001", "0041110002", "0041110003"):
        [bill] = await connector.fetch_bills("bil_cn_water", {"account_number": account})
        payment = bill_payment(account, bill.amount_due, biller="bil_cn_water", bill_ref=bill.bill_ref)
        assert (await connector.pay(payment)).outcome is Outcome.SUCCEEDED
        made.append(payment)
    [bill] = await connector.fetch_bills("bil_cn_water", {"account_number": "0041119999"})
    rejected = bill_payment("0041119999", bill.amount_due, biller="bil_cn_water", bill_ref=bill.bill_ref)
    await connector.pay(rejected)
    await connector.reverse(attempt_id=made[2].attempt_id, biller="bil_cn_water")
    await connector.pay(bill_payment("0041110004", 100, biller="bil_cn_creditcard"))  # another biller
    day = utility_sandbox.settlement_day("CN_WATER")
    lines = await connector.settlement_report("bil_cn_water", day)
    if day != day_before:  # the test ran across the biller's midnight
        lines += await connector.settlement_report("bil_cn_water", day_before)
    assert {(line.serial, line.account, line.amount, line.status) for line in lines} == {
        (made[0].attempt_id, "0041110001", made[0].amount, "SUCCESS"),
        (made[1].attempt_id, "0041110002", made[1].amount, "SUCCESS"),
        (made[2].attempt_id, "0041110003", made[2].amount, "REVERSED"),
    }
    with pytest.raises(ConnectorUnavailable):  # the biller has no file for a day that has not begun
        await connector.settlement_report("bil_cn_water", day + timedelta(days=2))
    old = await connector.settlement_report("bil_cn_water", day - timedelta(days=30))
    assert old == []


async def test_service_window_and_unreachable_biller(sandbox: Sandbox) -> None:
    connector = utility_connector(sandbox)
    sandbox.utility.window_closed = True
    with pytest.raises(ServiceWindowClosed):
        await connector.pay(bill_payment("0031234567", 100, biller="bil_cn_creditcard"))
    sandbox.utility.window_closed = False
    nowhere = msgspec.structs.replace(
        sandbox.settings.connectors["utility_biller"], endpoint="http://127.0.0.1:9"
    )
    closed = UtilityBillerConnector.create("utility_biller_closed", nowhere, sandbox.deps)
    with pytest.raises(ConnectorUnavailable):
        await closed.fetch_bills("bil_cn_power", {"account_number": "0031234567"})


# ---- telecom top-up -----------------------------------------------------------------------------


def topup(msisdn: str, amount: int, reference: str | None = None) -> BillPayment:
    return BillPayment(
        attempt_id=reference or attempt(),
        payment_id="pay_test",
        biller="bil_cn_mobile",
        customer_params={"msisdn": msisdn},
        amount=amount,
        currency="CNY",
    )


async def test_operator_lookup_and_validation(sandbox: Sandbox) -> None:
    connector = telecom_connector(sandbox)
    mobile = await connector.lookup("+8613800138000")
    assert (mobile.code, mobile.denominations.fixed) == ("CMCC", (1000, 3000, 5000, 10000))
    unicom = await connector.lookup("+8613012345678")
    assert (unicom.code, unicom.denominations.minimum, unicom.denominations.maximum) == ("CUCC", 1000, 50000)
    assert await connector.validate("bil_cn_mobile", {"msisdn": "+86 138 0013 8000"}, 3000) == {
        "msisdn": "+8613800138000"
    }
    with pytest.raises(InvalidParams, match="no mobile operator"):
        await connector.validate("bil_cn_mobile", {"msisdn": "+8613800000000"}, 3000)
    with pytest.raises(InvalidParams, match="not a valid phone number"):
        await connector.validate("bil_cn_mobile", {"msisdn": "+86138001"}, 3000)
    with pytest.raises(InvalidParams, match="must be a CN number"):
        await connector.validate("bil_cn_mobile", {"msisdn": "+14155552671"}, 3000)
    with pytest.raises(AmountNotAllowed):
        await connector.validate("bil_cn_mobile", {"msisdn": "+8613800138000"}, 2500)
    with pytest.raises(InvalidParams):
        await connector.fetch_bills("bil_cn_mobile", {"msisdn": "+8613800138000"})


async def test_topups_status_duplicates_and_report(sandbox: Sandbox) -> None:
    connector = telecom_connector(sandbox)
    done = topup("+8613800138000", 3000)
    posting = await connector.pay(done)
    assert posting.outcome is Outcome.SUCCEEDED
    assert posting.biller_reference
    assert (await connector.status(attempt_id=done.attempt_id, biller="bil_cn_mobile")) == posting
    assert (await connector.pay(done)) == posting  # a retry of the same reference
    with pytest.raises(DuplicateReference):
        await connector.pay(topup("+8613800138000", 5000, reference=done.attempt_id))
    with pytest.raises(AmountNotAllowed):  # refused before anything is sent
        await connector.pay(topup("+8613800138000", 2500))
    with pytest.raises(InvalidParams):
        await connector.pay(topup("+8613800000000", 3000))
    with pytest.raises(InvalidParams):
        await connector.reverse(attempt_id=done.attempt_id, biller="bil_cn_mobile")

    sandbox.telecom.async_completion = 0.3
    slow = topup("+8613800137777", 1000)
    assert (await connector.pay(slow)).outcome is Outcome.PENDING
    await asyncio.sleep(0.35)
    assert (
        await connector.status(attempt_id=slow.attempt_id, biller="bil_cn_mobile")
    ).outcome is Outcome.SUCCEEDED

    sandbox.telecom.reject_msisdns.add("+8613900001111")
    no = await connector.pay(topup("+8613900001111", 1000))
    assert (no.outcome, no.code) == (Outcome.FAILED, "biller_rejected")
    missing = await connector.status(attempt_id=attempt(), biller="bil_cn_mobile")
    assert (missing.outcome, missing.code) == (Outcome.PENDING, "reference_not_found")

    day = datetime.now(UTC).astimezone(telecom_sandbox.CN_TIME).date()
    lines = await connector.settlement_report("bil_cn_mobile", day)
    by_ref = {line.serial: line for line in lines}
    assert by_ref[done.attempt_id].status == "COMPLETED"
    assert by_ref[done.attempt_id].account == "+8613800138000"
    assert by_ref[slow.attempt_id].amount == 1000


async def test_telecom_signatures_both_ways(sandbox: Sandbox) -> None:
    impostor = telecom_connector(sandbox, secret="not-the-secret")
    with pytest.raises(SignatureError):  # the aggregator's 401 is signed with the real secret
        await impostor.lookup("+8613800138000")
    connector = telecom_connector(sandbox)
    sandbox.telecom.tamper_answers = True
    with pytest.raises(SignatureError):
        await connector.lookup("+8613800138000")
    made = topup("+8613800138000", 1000)
    with pytest.raises(OutcomeUnknown):
        await connector.pay(made)
    sandbox.telecom.tamper_answers = False
    status = await connector.status(attempt_id=made.attempt_id, biller="bil_cn_mobile")
    assert status.outcome is Outcome.SUCCEEDED
