"""risk.decision with the default rules: scores, thresholds, forced actions, shadow rules."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from risk.decision import Decision, Reason, Thresholds, decide, fail_closed
from risk.defaults import dev_rules
from risk.features import KEY_KINDS, WINDOWS, History, Velocity, VelocityCell, build_features
from risk.rules import Action, Ruleset, RuleSpec
from tests.unit.risk.risk_payments import IP_COUNTRIES, ORDINARY, features

DEFAULT_RULES = dev_rules()  # config/payhub.toml's
RULES = Ruleset.compile(DEFAULT_RULES)


def test_an_ordinary_small_payment_is_allowed_with_score_zero() -> None:
    decision = decide(RULES, features())
    assert decision.action is Action.ALLOW
    assert decision.score == 0
    assert decision.reasons == decision.shadow == decision.errors == ()
    assert decision.as_json() == {"score": 0, "decision": "allow", "reasons": [], "ruleset": RULES.version}


def test_a_first_payment_without_a_device_is_allowed_too() -> None:
    decision = decide(RULES, features(device_id=None, history=History()))
    assert (decision.action, decision.score) == (Action.ALLOW, 0)


def _reasons(decision: Decision) -> dict[str, Reason]:
    return {r.rule: r for r in decision.reasons}


# One case per default rule: the features that fire it, the decision, the observed values.
DEFAULT_RULE_CASES: list[tuple[str, dict[str, Any], Action, int, dict[str, Any]]] = [
    (
        "deny_list",
        {"history": History(120, True, deny_hits=("ip:198.51.100.66",)), "ip": "198.51.100.66"},
        Action.BLOCK,
        0,
        {"lists.deny": True},
    ),
    (
        "allow_list",
        {"history": History(120, True, allow_hits=("customer:cus_42",))},
        Action.ALLOW,
        0,
        {"lists.allow": True},
    ),
    (
        "new_device_high_amount",
        {"amount_usd": 2000.0, "device_id": "dev_new", "history": History(120, device_known=False)},
        Action.CHALLENGE,
        0,
        {"device.new": True, "amount_usd": 2000.0},
    ),
    ("very_high_amount", {"amount_usd": 5000.0}, Action.REVIEW, 0, {"amount_usd": 5000.0}),
    (
        "card_testing",
        {"velocity": {("ip", "h1"): VelocityCell(count=9, declines=5)}},
        Action.BLOCK,
        0,
        {"velocity.ip.h1.declines": 5, "velocity.device.h1.declines": 0},
    ),
    (
        "topup_burst",
        {
            "velocity": {("device", "h1"): VelocityCell(count=6, distinct_msisdn=6)},
            "msisdn": "+8613800138001",
        },
        Action.REVIEW,
        0,
        {"velocity.customer.h1.distinct_msisdn": 0, "velocity.device.h1.distinct_msisdn": 6},
    ),
    (
        "country_mismatch_high_amount",
        {"amount_usd": 500.0, "ip": "198.51.100.7"},
        Action.CHALLENGE,
        60,
        {"countries_mismatch": True, "amount_usd": 500.0},
    ),
    ("just_under_limit", {"amount_usd": 4999.99}, Action.ALLOW, 30, {"amount_usd": 4999.99}),
    (
        "velocity_card_burst",
        {"velocity": {("card", "m1"): VelocityCell(count=5, amount_usd=89.0)}},
        Action.CHALLENGE,
        50,
        {"velocity.card.m1.count": 5},
    ),
    (
        "otp_failures",
        {"history": History(120, True, otp_failures_24h=3)},
        Action.ALLOW,
        40,
        {"otp_failures_24h": 3},
    ),
]


def test_every_default_rule_has_a_case() -> None:
    assert sorted(c[0] for c in DEFAULT_RULE_CASES) == sorted(s.id for s in DEFAULT_RULES)


@pytest.mark.parametrize(
    ("rule", "change", "action", "score", "observed"),
    DEFAULT_RULE_CASES,
    ids=[c[0] for c in DEFAULT_RULE_CASES],
)
def test_each_default_rule_fires_with_its_reason(
    rule: str, change: dict[str, Any], action: Action, score: int, observed: dict[str, Any]
) -> None:
    decision = decide(RULES, features(**change))
    assert list(_reasons(decision)) == [rule]
    reason = _reasons(decision)[rule]
    assert reason.observed == observed
    assert reason.message
    assert (decision.action, decision.score) == (action, score)
    assert decision.as_json()["reasons"][0]["rule"] == rule


def test_allow_list_observes_its_flag_and_offsets_score() -> None:
    history = History(120, True, otp_failures_24h=3, allow_hits=("customer:cus_42",))
    decision = decide(RULES, features(history=history))
    assert _reasons(decision)["allow_list"].observed == {"lists.allow": True}
    assert _reasons(decision)["allow_list"].score == -100
    assert (decision.action, decision.score) == (Action.ALLOW, 0)  # 40 - 100, shown clamped at 0


def test_allow_list_does_not_lift_a_forced_action() -> None:
    history = History(120, True, allow_hits=("customer:cus_42",), deny_hits=("email:fraud@example.com",))
    assert decide(RULES, features(history=history)).action is Action.BLOCK


def test_just_under_limit_is_not_the_review_rule() -> None:
    assert "just_under_limit" not in _reasons(decide(RULES, features(amount_usd=5000.0)))
    assert "just_under_limit" not in _reasons(decide(RULES, features(amount_usd=4499.99)))


def test_no_usd_rate_disarms_amount_rules() -> None:
    decision = decide(RULES, features(amount=10_000_000, currency="XXX", amount_usd=None))
    assert decision.action is Action.ALLOW


def _scoring(score: int) -> Ruleset:
    return Ruleset.compile([RuleSpec("points", "amount > 0", score=score)])


@pytest.mark.parametrize(
    ("score", "action"),
    [
        (49, Action.ALLOW),
        (50, Action.CHALLENGE),
        (79, Action.CHALLENGE),
        (80, Action.REVIEW),
        (99, Action.REVIEW),
        (100, Action.BLOCK),
        (5000, Action.BLOCK),
    ],
)
def test_thresholds_map_scores_to_each_decision(score: int, action: Action) -> None:
    decision = decide(_scoring(score), features())
    assert decision.action is action
    assert decision.score == min(score, 1000)


def test_custom_thresholds() -> None:
    thresholds = Thresholds(challenge=10, review=20, block=30)
    assert decide(_scoring(25), features(), thresholds).action is Action.REVIEW


@pytest.mark.parametrize(("challenge", "review", "block"), [(0, 80, 100), (50, 40, 100), (50, 80, 79)])
def test_thresholds_must_be_ordered(challenge: int, review: int, block: int) -> None:
    with pytest.raises(ValueError, match="1 <= challenge <= review <= block"):
        Thresholds(challenge, review, block)


def test_forced_action_beats_a_low_score() -> None:
    ruleset = Ruleset.compile(
        [RuleSpec("force", "amount > 0", action=Action.REVIEW), RuleSpec("points", "amount > 0", score=10)]
    )
    decision = decide(ruleset, features())
    assert (decision.action, decision.score) == (Action.REVIEW, 10)


def test_score_beats_a_milder_forced_action() -> None:
    ruleset = Ruleset.compile([RuleSpec("both", "amount > 0", score=120, action=Action.CHALLENGE)])
    assert decide(ruleset, features()).action is Action.BLOCK


def test_shadow_rules_are_reported_but_not_applied() -> None:
    shadow = [
        RuleSpec("shadow_block", "amount > 0", action=Action.BLOCK, mode="shadow", message="trial"),
        RuleSpec("shadow_points", "amount > 0", score=90, mode="shadow"),
    ]
    with_shadow = decide(
        Ruleset.compile([*DEFAULT_RULES, *shadow]), features(amount_usd=500.0, ip="198.51.100.7")
    )
    without = decide(RULES, features(amount_usd=500.0, ip="198.51.100.7"))
    assert (with_shadow.action, with_shadow.score, with_shadow.reasons) == (
        without.action,
        without.score,
        without.reasons,
    )
    assert [r.rule for r in with_shadow.shadow] == ["shadow_block", "shadow_points"]
    assert with_shadow.shadow[0].action == "block"
    assert "shadow" not in with_shadow.as_json()


def test_runtime_errors_reach_the_decision() -> None:
    ruleset = Ruleset.compile([*DEFAULT_RULES, RuleSpec("typo", "custmer.new", action=Action.BLOCK)])
    decision = decide(ruleset, features())
    assert decision.errors == ("typo",)
    assert decision.action is Action.ALLOW


def test_reason_json_rounds_floats_and_lists_tuples() -> None:
    reason = Reason("r", "m", {"a": 1234.5678, "b": ("x", 2.0 / 3), "c": {"d": float("nan")}}, 5, None)
    assert reason.as_json() == {
        "rule": "r",
        "message": "m",
        "observed": {"a": 1234.57, "b": ["x", 0.67], "c": {"d": None}},
        "score": 5,
        "action": None,
    }


def test_fail_closed_holds_for_review() -> None:
    decision = fail_closed("abc123", "velocity store timed out")
    assert decision.action is Action.REVIEW
    assert decision.as_json() == {
        "score": 0,
        "decision": "review",
        "reasons": [
            {
                "rule": "features_unavailable",
                "message": "velocity store timed out",
                "observed": {},
                "score": 0,
                "action": "review",
            }
        ],
        "ruleset": "abc123",
    }


_counts = st.integers(min_value=0, max_value=50)
_cells = st.builds(
    VelocityCell,
    count=_counts,
    amount_usd=st.floats(min_value=0, max_value=1e6),
    declines=_counts,
    distinct_msisdn=_counts,
)
_velocity = st.dictionaries(st.tuples(st.sampled_from(KEY_KINDS), st.sampled_from(WINDOWS)), _cells).map(
    Velocity
)
_history = st.builds(
    History,
    customer_age_days=st.none() | st.integers(min_value=0, max_value=5000),
    device_known=st.booleans(),
    otp_failures_24h=_counts,
    deny_hits=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    allow_hits=st.lists(st.text(max_size=20), max_size=2).map(tuple),
)
_maybe_text = st.none() | st.text(max_size=30)


@given(
    amount=st.integers(min_value=0, max_value=10**12),
    amount_usd=st.none() | st.floats(allow_nan=True, allow_infinity=True),
    card_bin=_maybe_text,
    phone=_maybe_text,
    ip=st.none() | st.ip_addresses().map(str) | st.text(max_size=40),
    device_id=_maybe_text,
    velocity=_velocity,
    history=_history,
    score_rule=st.integers(min_value=-500, max_value=500),
)
def test_decide_never_raises_and_never_undercuts_the_score(
    amount: int,
    amount_usd: float | None,
    card_bin: str | None,
    phone: str | None,
    ip: str | None,
    device_id: str | None,
    velocity: Velocity,
    history: History,
    score_rule: int,
) -> None:
    facts = dataclasses.replace(
        ORDINARY,
        amount=amount,
        amount_usd=amount_usd,
        card_bin=card_bin,
        phone=phone,
        ip=ip,
        device_id=device_id,
    )
    ruleset = Ruleset.compile([*DEFAULT_RULES, RuleSpec("extra", "amount >= 0", score=score_rule or 1)])
    thresholds = Thresholds()
    decision = decide(ruleset, build_features(facts, velocity, history, IP_COUNTRIES), thresholds)
    assert decision.errors == ()
    assert 0 <= decision.score <= 1000
    assert decision.action >= thresholds.action_for(decision.score)
    assert decision.as_json()["decision"] == decision.action.label


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from(["amount_usd", "lists", "device", "velocity", "other"]), _json_values))
def test_decide_never_raises_whatever_the_features(raw: dict[str, Any]) -> None:
    decision = decide(RULES, raw)
    assert decision.action >= Thresholds().action_for(decision.score)
    assert set(decision.errors) <= {s.id for s in DEFAULT_RULES}
