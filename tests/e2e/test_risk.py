"""Risk over real mTLS (DESIGN §9, §12): decisions with reasons on every payment, the dev rules,
OTP and device-signature step-up, the operator review queue and lists.

The gateway runs with the dev rules of config/payhub.toml, the FX feed (amounts in USD) and the
message sink (OTP texts) as simulators on free ports; payments go to the in-process connector.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from config.settings import (
    DEFAULT_CONFIG,
    ConfigError,
    RiskRuleSettings,
    RiskSettings,
    RiskTenantSettings,
    Settings,
    load_settings,
)
from connectors.sandbox import fx as fx_sandbox
from connectors.sandbox import messages as message_sandbox
from crypto.pki import PkiPaths
from gateway.keys import DB_POOL, PAYMENTS
from gateway.server import RunningGateway
from gateway.services.risk import compile_rules
from gateway.store.risk import RiskKeys
from gateway.store.velocity_redis import RedisVelocity
from tests.support.api import Api, api_client, card_payment
from tests.support.mtls import gateway
from tests.support.traffic import REDIS_URL, metric, needs_redis, scrape, unique_prefix

PHONE = "+12025550143"  # US, like the card (BIN 411111) and the IP: no country mismatch
HIGH_USD = 250_000  # 2,500.00 USD: a new device at this amount is challenged
REVIEW_USD = 600_000  # 6,000.00 USD: reviewed


@dataclass
class Stack:
    gw: RunningGateway
    sink: message_sandbox.MessageSink
    acme: Api
    ops: Api


def with_risk(settings: Settings, **changes: Any) -> Settings:
    return msgspec.structs.replace(settings, risk=msgspec.structs.replace(settings.risk, **changes))


# The dev rules as config/payhub.toml has them (the shared settings fixture quiets velocity rules).
DEV_RISK = load_settings(DEFAULT_CONFIG, env={}).risk


@pytest.fixture
async def stack(settings: Settings, pki: PkiPaths) -> AsyncIterator[Stack]:
    settings = msgspec.structs.replace(settings, risk=DEV_RISK)
    sandbox = msgspec.structs.replace(settings.sandbox, fx=0, messages=0)
    settings = msgspec.structs.replace(settings, sandbox=sandbox)
    fx = await fx_sandbox.start(settings)
    sink = await message_sandbox.start(settings)
    ports = msgspec.structs.replace(sandbox, fx=fx.port, messages=sink.port)
    try:
        async with gateway(msgspec.structs.replace(settings, sandbox=ports)) as gw:
            risk = gw.api[PAYMENTS].risk
            assert risk is not None
            for _ in range(200):  # the first USD rates arrive right after start-up
                if risk.amount_usd(100, "CNY") is not None:
                    break
                await asyncio.sleep(0.02)
            async with (
                api_client(pki, "acme", gw.api_port) as acme,
                api_client(pki, "ops", gw.api_port) as ops,
            ):
                yield Stack(gw, sink, acme, ops)
    finally:
        await sink.close()
        await fx.close()


def usd_payment(
    amount: int, *, customer: str = "cus_risk", device: str | None = "dev_new", **extra: Any
) -> dict[str, Any]:
    body = card_payment(amount=amount, **extra)
    body["currency"] = "USD"
    body["customer"] = {"id": customer, "phone": PHONE, "ip": "198.51.100.7"}
    if device is not None:
        body["customer"]["device_id"] = device
    return body


def last_code(sink: message_sandbox.MessageSink, phone: str = PHONE) -> str:
    match = re.search(r"\b([0-9]{6})\b", sink.sent_to(phone)[-1].body)
    assert match is not None
    return match[1]


async def attempts(gw: RunningGateway, payment_id: str) -> int:
    """Attempts that went to a connector. A payment recorded before its decision has a first attempt
    from the start; a decision other than allow ends it unsent (decline code ``risk_decision``)."""
    async with gw.api[DB_POOL].acquire() as conn:
        count: int = await conn.fetchval(
            """SELECT count(*) FROM payment_attempts
               WHERE payment_id = $1 AND decline_code IS DISTINCT FROM 'risk_decision'""",
            payment_id,
        )
    return count


# ---- decisions ---------------------------------------------------------------------------------


async def test_every_payment_answer_carries_its_risk_decision(stack: Stack) -> None:
    paid = await stack.acme.post("/v1/payments", card_payment())
    assert paid.status == 200, paid.body
    risk = paid.body["risk"]
    assert (risk["score"], risk["decision"], risk["reasons"]) == (0, "allow", [])
    assert re.fullmatch(r"[0-9a-f]{12}", risk["ruleset"])
    read = await stack.acme.get(f"/v1/payments/{paid.body['id']}")
    assert read.body["risk"] == risk


async def test_the_deny_list_blocks_before_any_connector_call(stack: Stack) -> None:
    body = card_payment(customer={"id": "cus_x", "ip": "198.51.100.66"})
    blocked = await stack.acme.post("/v1/payments", body)
    assert blocked.status == 200
    assert (blocked.body["status"], blocked.body["failure"]["code"]) == ("failed", "risk_blocked")
    reason = blocked.body["risk"]["reasons"][0]
    assert (reason["rule"], reason["action"], reason["observed"]) == (
        "deny_list",
        "block",
        {"lists.deny": True},
    )
    assert await attempts(stack.gw, blocked.body["id"]) == 0


async def test_a_very_high_amount_is_reviewed_and_an_operator_approves_it(stack: Stack) -> None:
    held = await stack.acme.post("/v1/payments", usd_payment(REVIEW_USD, device=None))
    assert held.body["status"] == "under_review", held.body
    assert [r["rule"] for r in held.body["risk"]["reasons"]] == ["very_high_amount"]
    assert held.body["risk"]["reasons"][0]["observed"]["amount_usd"] == 6000.0
    assert await attempts(stack.gw, held.body["id"]) == 0

    refused = await stack.acme.get("/v1/reviews")
    assert (refused.status, refused.body["error"]["type"]) == (403, "permission_error")
    queue = await stack.ops.get("/v1/reviews")
    assert queue.status == 200
    review = next(r for r in queue.body["data"] if r["payment"] == held.body["id"])
    assert (review["tenant"], review["risk"]["decision"]) == ("acme", "review")

    client_try = await stack.acme.post(f"/v1/reviews/{review['id']}/approve", key=None)
    assert client_try.status == 403
    approved = await stack.ops.post(f"/v1/reviews/{review['id']}/approve", key=None)
    assert (approved.status, approved.body["status"]) == (200, "succeeded"), approved.body
    assert (await stack.acme.get(f"/v1/payments/{held.body['id']}")).body["status"] == "succeeded"
    again = await stack.ops.post(f"/v1/reviews/{review['id']}/approve", key=None)
    assert (again.status, again.body["error"]["code"]) == (409, "payment_unexpected_state")
    async with stack.gw.api[DB_POOL].acquire() as conn:
        audited = await conn.fetchrow(
            "SELECT actor, tenant FROM audit_events WHERE action = 'review.approve' AND object = $1",
            held.body["id"],
        )
    assert tuple(audited) == ("spiffe://payhub.local/tenant/ops/role/operator", "acme")


async def test_approve_and_reject_at_once_one_wins_and_money_agrees(stack: Stack) -> None:
    for _ in range(3):
        held = await stack.acme.post("/v1/payments", usd_payment(REVIEW_USD, device=None))
        review_id = "rev_" + held.body["id"].removeprefix("pay_")
        approved, rejected = await asyncio.gather(
            stack.ops.post(f"/v1/reviews/{review_id}/approve", key=None),
            stack.ops.post(f"/v1/reviews/{review_id}/reject", key=None),
        )
        assert sorted([approved.status, rejected.status]) == [200, 409], (approved.body, rejected.body)
        final = (await stack.acme.get(f"/v1/payments/{held.body['id']}")).body
        charged = await attempts(stack.gw, held.body["id"])
        if approved.status == 200:
            assert (final["status"], final["amount_captured"], charged) == ("succeeded", REVIEW_USD, 1)
        else:
            assert (final["status"], final["amount_captured"], charged) == ("failed", 0, 0)


async def test_a_held_payment_is_canceled_without_a_connector(stack: Stack) -> None:
    held = await stack.acme.post("/v1/payments", usd_payment(REVIEW_USD, device=None))
    canceled = await stack.acme.post(f"/v1/payments/{held.body['id']}/cancel")
    assert (canceled.status, canceled.body["status"]) == (200, "canceled")
    assert await attempts(stack.gw, held.body["id"]) == 0
    late = await stack.ops.post(f"/v1/reviews/rev_{held.body['id'].removeprefix('pay_')}/approve", key=None)
    assert late.status == 409


async def test_an_operator_rejects_a_reviewed_payment(stack: Stack) -> None:
    held = await stack.acme.post("/v1/payments", usd_payment(REVIEW_USD, device=None))
    review_id = "rev_" + held.body["id"].removeprefix("pay_")
    rejected = await stack.ops.post(f"/v1/reviews/{review_id}/reject", {"note": "stolen card"}, key=None)
    assert (rejected.body["status"], rejected.body["failure"]["code"]) == ("failed", "risk_blocked")
    assert await attempts(stack.gw, held.body["id"]) == 0
    unknown = await stack.ops.post("/v1/reviews/rev_nothing/reject", key=None)
    assert unknown.status == 404


# ---- OTP step-up -------------------------------------------------------------------------------


async def test_otp_challenge_wrong_then_right_code(stack: Stack) -> None:
    held = await stack.acme.post("/v1/payments", usd_payment(HIGH_USD))
    assert held.body["status"] == "requires_action", held.body
    assert held.body["next_action"] == {"type": "otp", "channel": "sms", "to": "+12•••••0143"}
    assert [r["rule"] for r in held.body["risk"]["reasons"]] == ["new_device_high_amount"]
    code = last_code(stack.sink)
    wrong = "000000" if code != "000000" else "111111"
    path = f"/v1/payments/{held.body['id']}/confirm"
    refused = await stack.acme.post(path, {"otp": wrong})
    assert (refused.status, refused.body["error"]["code"]) == (400, "authentication_failed")
    assert "4 tries left" in refused.body["error"]["message"]
    confirmed = await stack.acme.post(path, {"otp": code})
    assert (confirmed.status, confirmed.body["status"]) == (200, "succeeded"), confirmed.body
    assert confirmed.body["next_action"] is None
    replayed = await stack.acme.post(path, {"otp": code})  # single use: nothing left to confirm
    assert (replayed.status, replayed.body["error"]["code"]) == (409, "payment_unexpected_state")
    # The device paid once, so the next high amount from it is no longer challenged.
    known = await stack.acme.post("/v1/payments", usd_payment(HIGH_USD))
    assert known.body["status"] == "succeeded", known.body["risk"]


async def test_five_wrong_codes_lock_the_customers_step_up(stack: Stack) -> None:
    held = await stack.acme.post("/v1/payments", usd_payment(HIGH_USD, customer="cus_lock"))
    code = last_code(stack.sink)
    wrong = "000000" if code != "000000" else "111111"
    path = f"/v1/payments/{held.body['id']}/confirm"
    for left in (4, 3, 2, 1):
        refused = await stack.acme.post(path, {"otp": wrong})
        assert f"{left} tr" in refused.body["error"]["message"]
    locked = await stack.acme.post(path, {"otp": wrong})
    assert (locked.status, locked.body["status"]) == (200, "failed")
    assert locked.body["failure"]["code"] == "authentication_required"
    too_late = await stack.acme.post(path, {"otp": code})
    assert too_late.status == 409
    # Locked for 30 minutes: the next challenge for this customer fails at once.
    next_one = await stack.acme.post(
        "/v1/payments", usd_payment(HIGH_USD, customer="cus_lock", device="dev_2")
    )
    assert (next_one.body["status"], next_one.body["failure"]["code"]) == (
        "failed",
        "authentication_required",
    )
    async with stack.gw.api[DB_POOL].acquire() as conn:
        tries = await conn.fetchval(
            "SELECT tries FROM risk_challenges WHERE payment_id = $1", held.body["id"]
        )
    assert tries == 5


@pytest.fixture
async def short_otp(settings: Settings) -> Settings:
    return with_risk(settings, otp_ttl=0.5)


async def test_an_expired_challenge_fails_the_payment(short_otp: Settings, pki: PkiPaths) -> None:
    sandbox = msgspec.structs.replace(short_otp.sandbox, fx=0, messages=0)
    settings = msgspec.structs.replace(short_otp, sandbox=sandbox)
    sink = await message_sandbox.start(settings)
    try:
        ports = msgspec.structs.replace(sandbox, messages=sink.port)
        # No FX feed here: a challenge forced by a tenant rule instead of the amount rule.
        rule = RiskRuleSettings(id="always_challenge", when="amount == 4242", action="challenge")
        risk = msgspec.structs.replace(settings.risk, tenants={"acme": RiskTenantSettings(rules=[rule])})
        async with (
            gateway(msgspec.structs.replace(settings, sandbox=ports, risk=risk)) as gw,
            api_client(pki, "acme", gw.api_port) as acme,
        ):
            body = card_payment(amount=4242, customer={"id": "cus_exp", "phone": PHONE})
            held = await acme.post("/v1/payments", body)
            assert held.body["status"] == "requires_action"
            code = last_code(sink)
            await asyncio.sleep(0.8)
            late = await acme.post(f"/v1/payments/{held.body['id']}/confirm", {"otp": code})
            assert (late.body["status"], late.body["failure"]["code"]) == (
                "failed",
                "authentication_required",
            )
            assert await attempts(gw, held.body["id"]) == 0
            # One left unanswered is failed by the expiry worker.
            other = await acme.post("/v1/payments", {**body, "customer": {"id": "cus_exp2", "phone": PHONE}})
            for _ in range(100):
                status = (await acme.get(f"/v1/payments/{other.body['id']}")).body["status"]
                if status == "failed":
                    break
                await asyncio.sleep(0.1)
            assert status == "failed"
            # A challenged payment canceled before its expiry: canceled with nothing at a connector,
            # and its challenge is closed by the worker all the same.
            third = await acme.post("/v1/payments", {**body, "customer": {"id": "cus_exp3", "phone": PHONE}})
            canceled = await acme.post(f"/v1/payments/{third.body['id']}/cancel")
            assert (canceled.status, canceled.body["status"]) == (200, "canceled"), canceled.body
            assert await attempts(gw, third.body["id"]) == 0
            for _ in range(100):
                async with gw.api[DB_POOL].acquire() as conn:
                    closed = await conn.fetchval(
                        "SELECT status FROM risk_challenges WHERE payment_id = $1", third.body["id"]
                    )
                if closed == "expired":
                    break
                await asyncio.sleep(0.1)
            assert closed == "expired"
    finally:
        await sink.close()


# ---- device-signature step-up ------------------------------------------------------------------


def _public(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


async def test_device_signature_success_forgery_and_replay(stack: Stack) -> None:
    device_key, other_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    registered = await stack.acme.post(
        "/v1/devices",
        {"customer": "cus_dev", "device_id": "dev_phone", "public_key": _public(device_key)},
        key=None,
    )
    assert registered.status == 200, registered.body
    same = await stack.acme.post(
        "/v1/devices",
        {"customer": "cus_dev", "device_id": "dev_phone", "public_key": _public(device_key)},
        key=None,
    )
    assert (same.status, same.body["id"]) == (200, registered.body["id"])
    swapped = await stack.acme.post(
        "/v1/devices",
        {"customer": "cus_dev", "device_id": "dev_phone", "public_key": _public(other_key)},
        key=None,
    )
    assert swapped.status == 409

    first = await stack.acme.post(
        "/v1/payments", usd_payment(HIGH_USD, customer="cus_dev", device="dev_phone")
    )
    action = first.body["next_action"]
    assert action["type"] == "device_signature", first.body
    message = action["message"].encode()
    path = f"/v1/payments/{first.body['id']}/confirm"
    forged = await stack.acme.post(
        path, {"device_signature": base64.b64encode(other_key.sign(message)).decode()}
    )
    assert (forged.status, forged.body["error"]["code"]) == (400, "authentication_failed")
    wrong_kind = await stack.acme.post(path, {"otp": "123456"})
    assert (wrong_kind.status, wrong_kind.body["error"]["param"]) == (400, "device_signature")
    signed = base64.b64encode(device_key.sign(message)).decode()
    ok = await stack.acme.post(path, {"device_signature": signed})
    assert (ok.status, ok.body["status"]) == (200, "succeeded"), ok.body

    # A second challenge on another new device: the first signature is for another nonce.
    second = await stack.acme.post(
        "/v1/payments", usd_payment(HIGH_USD, customer="cus_dev", device="dev_phone_2")
    )
    assert second.body["next_action"]["type"] == "otp"  # no key registered for this device
    await stack.acme.post(
        "/v1/devices",
        {"customer": "cus_dev", "device_id": "dev_phone_3", "public_key": _public(device_key)},
        key=None,
    )
    third = await stack.acme.post(
        "/v1/payments", usd_payment(HIGH_USD, customer="cus_dev", device="dev_phone_3")
    )
    replay = await stack.acme.post(f"/v1/payments/{third.body['id']}/confirm", {"device_signature": signed})
    assert (replay.status, replay.body["error"]["code"]) == (400, "authentication_failed")


# ---- rules as data -----------------------------------------------------------------------------


def tenant_rules(settings: Settings, *rules: RiskRuleSettings) -> Settings:
    risk = msgspec.structs.replace(settings.risk, tenants={"acme": RiskTenantSettings(rules=list(rules))})
    return msgspec.structs.replace(settings, risk=risk)


@pytest.fixture
def scored(settings: Settings) -> Settings:
    return tenant_rules(
        settings,
        RiskRuleSettings(id="score_60", when="amount == 6060", score=60, message="sixty"),
        RiskRuleSettings(id="score_85", when="amount == 8585", score=85),
        RiskRuleSettings(id="score_120", when="amount == 12012", score=120),
        RiskRuleSettings(id="shadow_block", when="amount > 0", action="block", mode="shadow"),
    )


async def test_thresholds_map_scores_to_decisions_and_shadow_rules_only_count(
    scored: Settings, pki: PkiPaths
) -> None:
    async with gateway(scored) as gw, api_client(pki, "acme", gw.api_port) as acme:
        expected = {1000: ("allow", "succeeded"), 6060: ("challenge", "requires_action"),
                    8585: ("review", "under_review"), 12012: ("block", "failed")}  # fmt: skip
        for amount, (decision, status) in expected.items():
            body = card_payment(amount=amount, customer={"id": "cus_t", "phone": PHONE})
            paid = await acme.post("/v1/payments", body)
            assert (paid.body["risk"]["decision"], paid.body["status"]) == (decision, status), paid.body
            assert all(r["rule"] != "shadow_block" for r in paid.body["risk"]["reasons"])
        text = await scrape(gw.ops_port)
        assert metric(text, "payhub_risk_rule_hits_total", rule="shadow_block", mode="shadow") == 4
        assert metric(text, "payhub_risk_decisions_total", decision="challenge") == 1


def test_a_rule_that_does_not_compile_names_its_id(settings: Settings) -> None:
    bad = RiskRuleSettings(id="broken_rule", when="amount >", score=1)
    with pytest.raises(ConfigError, match="broken_rule"):
        compile_rules(msgspec.structs.replace(settings.risk, rules=[bad]), ["acme"])


async def test_a_rule_that_does_not_compile_stops_start_up(settings: Settings) -> None:
    bad = tenant_rules(settings, RiskRuleSettings(id="broken_rule", when="amount >", score=1))
    with pytest.raises(ConfigError, match="broken_rule"):
        async with gateway(bad):
            pass


async def test_card_testing_blocks_after_declines_from_one_ip(stack: Stack) -> None:
    ip = "192.0.2.99"
    for _ in range(5):
        declined = await stack.acme.post(
            "/v1/payments", card_payment("4000000000000002", customer={"id": "cus_ct", "ip": ip})
        )
        assert declined.body["status"] == "failed", declined.body
    blocked = await stack.acme.post("/v1/payments", card_payment(customer={"id": "cus_ct2", "ip": ip}))
    assert blocked.body["failure"]["code"] == "risk_blocked", blocked.body
    reason = blocked.body["risk"]["reasons"][0]
    assert reason["rule"] == "card_testing"
    assert reason["observed"]["velocity.ip.h1.declines"] == 5


# ---- lists -------------------------------------------------------------------------------------


async def test_operators_manage_the_deny_list_and_clients_cannot(stack: Stack) -> None:
    email = f"mule-{secrets.token_hex(3)}@example.com"
    refused = await stack.acme.post("/v1/admin/lists/deny", {"kind": "email", "value": email}, key=None)
    assert refused.status == 403
    added = await stack.ops.post("/v1/admin/lists/deny", {"kind": "email", "value": email.upper()}, key=None)
    assert (added.status, added.body["value"]) == (200, email), added.body
    listed = await stack.ops.get("/v1/admin/lists/deny")
    assert added.body["id"] in [e["id"] for e in listed.body["data"]]
    body = card_payment(customer={"id": "cus_mule", "email": email})
    blocked = await stack.acme.post("/v1/payments", body)
    assert blocked.body["failure"]["code"] == "risk_blocked"
    removed = await stack.ops.request("DELETE", f"/v1/admin/lists/deny/{added.body['id']}")
    assert removed.status == 200
    allowed = await stack.acme.post("/v1/payments", body)
    assert allowed.body["status"] == "succeeded"


async def test_a_prepaid_or_balance_payment_is_refused_instead_of_held(stack: Stack) -> None:
    body = {
        "amount": REVIEW_USD,
        "currency": "USD",
        "payment_method": {"type": "prepaid", "prepaid": {"code": "PP-12345678"}},
        "customer": {"id": "cus_pp"},
    }
    refused = await stack.acme.post("/v1/payments", body)
    assert (refused.body["status"], refused.body["failure"]["code"]) == ("failed", "risk_blocked")
    assert [r["rule"] for r in refused.body["risk"]["reasons"]] == ["very_high_amount", "not_holdable"]
    async with stack.gw.api[DB_POOL].acquire() as conn:  # a blocked payment keeps no method details
        kept = await conn.fetchval("SELECT held_details FROM payments WHERE id = $1", refused.body["id"])
    assert kept is None  # the prepaid code is a bearer secret


def test_risk_settings_refuse_a_bad_list_entry() -> None:
    from config.settings import _validate_risk

    def fail(key: str, why: str) -> ConfigError:
        return ConfigError(f"{key}: {why}")

    with pytest.raises(ConfigError, match=r"risk\.deny"):
        _validate_risk(RiskSettings(deny=["phone+861380"]), fail)


@dataclass
class Reloadable:
    settings: Settings
    path: Path
    dev: str


@pytest.fixture
def reloadable(settings: Settings, tmp_path: Path) -> Reloadable:
    path = tmp_path / "payhub.toml"
    dev = Path(settings.source).read_text()
    path.write_text(dev)
    return Reloadable(msgspec.structs.replace(settings, source=str(path)), path, dev)


async def test_a_config_reload_swaps_the_rules_at_once(reloadable: Reloadable, pki: PkiPaths) -> None:
    start, path, dev = reloadable.settings, reloadable.path, reloadable.dev
    async with gateway(start) as gw, api_client(pki, "acme", gw.api_port) as acme:
        before = await acme.post("/v1/payments", card_payment(amount=7777))
        assert before.body["risk"]["decision"] == "allow"
        rule = '\n[[risk.tenants.acme.rules]]\nid = "reloaded"\nwhen = "amount == 7777"\naction = "block"\n'
        path.write_text(dev + rule)
        gw.reload()
        after = await acme.post("/v1/payments", card_payment(amount=7777))
        assert (after.body["risk"]["decision"], after.body["risk"]["reasons"][0]["rule"]) == (
            "block",
            "reloaded",
        )
        assert after.body["risk"]["ruleset"] != before.body["risk"]["ruleset"]
        path.write_text(dev + rule.replace("amount == 7777", "amount = 7777"))  # does not compile
        gw.reload()
        kept = await acme.post("/v1/payments", card_payment(amount=7777))
        assert kept.body["risk"]["ruleset"] == after.body["risk"]["ruleset"]


# ---- velocity counters in Redis (PAYHUB_REDIS_URL) -----------------------------------------------


@needs_redis
async def test_with_redis_the_counters_live_there_and_card_testing_still_blocks(
    settings: Settings, pki: PkiPaths
) -> None:
    assert REDIS_URL is not None
    limits = msgspec.structs.replace(settings.limits, redis_key_prefix=unique_prefix())
    redis = msgspec.structs.replace(settings, redis_url=REDIS_URL, limits=limits, risk=DEV_RISK)
    async with gateway(redis) as gw, api_client(pki, "acme", gw.api_port) as acme:
        ip = "192.0.2.77"
        for _ in range(5):
            declined = await acme.post("/v1/payments", card_payment("4000000000000002", customer={"ip": ip}))
            assert declined.body["status"] == "failed"
        blocked = await acme.post("/v1/payments", card_payment(customer={"ip": ip}))
        assert blocked.body["failure"]["code"] == "risk_blocked", blocked.body
        assert blocked.body["risk"]["reasons"][0]["observed"]["velocity.ip.h1.declines"] == 5
        async with gw.api[DB_POOL].acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM risk_counters") == 0  # none in PostgreSQL


@needs_redis
async def test_redis_counts_a_payment_once_and_msisdns_distinctly() -> None:
    assert REDIS_URL is not None
    velocity = RedisVelocity(REDIS_URL, prefix=unique_prefix(), timeout=1.0)
    try:
        for n in range(3):
            keys = RiskKeys(
                pairs=(("customer", "cus_r"), ("msisdn", f"+861380000000{n}")),
                amount_usd_cents=1250,
                customer_id="cus_r",
                msisdn=f"+861380000000{n}",
                counted_here=False,
            )
            assert await velocity.count("acme", f"pay_{n}", keys)
            assert not await velocity.count("acme", f"pay_{n}", keys)  # a retry counts nothing
        assert await velocity.count_decline("acme", "pay_0", keys)
        assert not await velocity.count_decline("acme", "pay_0", keys)
        seen = await velocity.read("acme", RiskKeys(pairs=(("customer", "cus_r"),), customer_id="cus_r"))
        cell = seen["customer"]["h1"]
        assert (cell["count"], cell["amount_usd"], cell["declines"], cell["distinct_msisdn"]) == (
            3,
            37.5,
            1,
            3,
        )
        assert seen["customer"]["d1"]["count"] == 3
    finally:
        await velocity.close()


async def test_with_risk_off_held_payment_routes_answer_409(settings: Settings, pki: PkiPaths) -> None:
    off = with_risk(settings, enabled=False)
    async with (
        gateway(off) as gw,
        api_client(pki, "acme", gw.api_port) as acme,
        api_client(pki, "ops", gw.api_port) as ops,
    ):
        paid = await acme.post("/v1/payments", card_payment())
        assert (paid.body["status"], paid.body["risk"]) == ("succeeded", None)
        confirm = await acme.post(f"/v1/payments/{paid.body['id']}/confirm", {"otp": "123456"})
        approve = await ops.post("/v1/reviews/rev_x1/approve", key=None)
        assert (confirm.status, approve.status) == (409, 409), (confirm.body, approve.body)
