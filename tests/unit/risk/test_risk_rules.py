"""risk.rules: compiling, versioning and evaluating CEL rules."""

from __future__ import annotations

import dataclasses

import pytest

from risk.defaults import dev_rules
from risk.rules import Action, Rule, RuleError, Ruleset, RuleSpec
from tests.unit.risk.risk_payments import features

DEFAULT_RULES = dev_rules()  # config/payhub.toml's


def test_actions_are_ordered_by_severity() -> None:
    assert Action.ALLOW < Action.CHALLENGE < Action.REVIEW < Action.BLOCK
    assert max(Action.CHALLENGE, Action.BLOCK, Action.ALLOW) is Action.BLOCK


@pytest.mark.parametrize("action", list(Action))
def test_action_label_round_trips(action: Action) -> None:
    assert str(action) == action.label == action.name.lower()
    assert Action.parse(action.label) is action
    assert Action.parse(f" {action.label.upper()} ") is action


def test_action_parse_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown risk action 'deny'"):
        Action.parse("deny")


def test_compile_error_names_the_rule_and_the_cel_error() -> None:
    with pytest.raises(RuleError, match=r"'broken'.*invalid CEL.*Syntax error") as caught:
        Ruleset.compile(
            [RuleSpec("ok", "amount_usd > 1.0", score=1), RuleSpec("broken", "amount_usd >", score=1)]
        )
    assert caught.value.rule_id == "broken"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (RuleSpec("no_effect", "true"), "non-zero score, an action"),
        (RuleSpec("", "true", score=1), "id must be"),
        (RuleSpec("has space", "true", score=1), "id must be"),
        (RuleSpec("empty", "  ", score=1), "'when' is empty"),
        (RuleSpec("bad_mode", "true", score=1, mode="dry-run"), "mode must be"),  # type: ignore[arg-type]
        (RuleSpec("float_score", "true", score=1.5), "score must be an integer"),  # type: ignore[arg-type]
        (RuleSpec("str_action", "true", action="block"), "action must be an Action"),  # type: ignore[arg-type]
    ],
)
def test_malformed_rules_are_refused(spec: RuleSpec, problem: str) -> None:
    with pytest.raises(RuleError, match=problem):
        Rule.compile(spec)


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(RuleError, match="'twice': duplicate rule id"):
        Ruleset.compile([RuleSpec("twice", "true", score=1), RuleSpec("twice", "false", score=2)])


def test_version_is_stable_across_compiles() -> None:
    first = Ruleset.compile(DEFAULT_RULES)
    assert first.version == Ruleset.compile(list(DEFAULT_RULES)).version
    assert len(first.version) == 12
    assert int(first.version, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"when": "amount_usd >= 5001.0"},
        {"score": 1},
        {"action": Action.BLOCK},
        {"mode": "shadow"},
        {"id": "very_high_amount_v2"},
    ],
)
def test_version_changes_when_a_rule_changes(change: dict[str, object]) -> None:
    changed = [dataclasses.replace(s, **change) if s.id == "very_high_amount" else s for s in DEFAULT_RULES]
    assert Ruleset.compile(changed).version != Ruleset.compile(DEFAULT_RULES).version


def test_version_ignores_the_wording_of_messages() -> None:
    reworded = [dataclasses.replace(s, message="reworded") for s in DEFAULT_RULES]
    assert Ruleset.compile(reworded).version == Ruleset.compile(DEFAULT_RULES).version


def test_rule_order_is_part_of_the_version() -> None:
    # Order decides the order of reasons[], so it is part of what the version identifies.
    assert Ruleset.compile(DEFAULT_RULES[::-1]).version != Ruleset.compile(DEFAULT_RULES).version


@pytest.mark.parametrize(
    ("when", "paths"),
    [
        ("velocity.ip.h1.declines >= 5", ("velocity.ip.h1.declines",)),
        ("device.new && amount_usd >= 2000.0", ("device.new", "amount_usd")),
        ('customer.email.endsWith("@example.com")', ("customer.email",)),
        ('"velocity.ip" == card.bin // velocity.x in a comment', ("card.bin",)),
        ('lists.deny_hits.exists(h, h.startsWith("ip:"))', ("lists.deny_hits",)),
        ('size(lists.deny_hits) > 0 && velocity["ip"].h1.count > 0', ("lists.deny_hits", "velocity")),
        ("method in ['card', 'wallet'] && true", ("method",)),
        ("card . country != ip.country", ("card.country", "ip.country")),
    ],
)
def test_rules_know_the_paths_they_read(when: str, paths: tuple[str, ...]) -> None:
    assert Rule.compile(RuleSpec("r", when, score=1)).paths == paths


def test_hits_carry_observed_values_and_missing_paths_read_none() -> None:
    rule = Rule.compile(RuleSpec("r", "has(customer.vip) || amount_usd > 1.0", score=1))
    [hit] = Ruleset([rule], "v").evaluate(features()).hits
    assert hit.observed == {"customer.vip": None, "amount_usd": 17.8}
    assert not hit.shadow


def test_a_rule_that_errors_at_run_time_is_reported_not_matched() -> None:
    ruleset = Ruleset.compile(
        [
            RuleSpec("no_such_key", "customer.vip == true", action=Action.BLOCK),
            RuleSpec("no_such_variable", "risk_score > 1", action=Action.BLOCK),
            RuleSpec("division", "amount / 0 > 1", action=Action.BLOCK),
            RuleSpec("not_a_bool", "amount_usd", action=Action.BLOCK),
            RuleSpec("fine", "amount > 0", score=1),
        ]
    )
    evaluation = ruleset.evaluate(features())
    assert evaluation.errors == ("no_such_key", "no_such_variable", "division", "not_a_bool")
    assert [h.rule.id for h in evaluation.hits] == ["fine"]


def test_a_value_cel_cannot_convert_only_breaks_the_rules_that_read_it() -> None:
    ruleset = Ruleset.compile(
        [RuleSpec("reads_it", "size(odd) > 0", score=1), RuleSpec("does_not", "amount > 0", score=1)]
    )
    evaluation = ruleset.evaluate({**features(), "odd": {1, 2}})
    assert evaluation.errors == ("reads_it",)
    assert [h.rule.id for h in evaluation.hits] == ["does_not"]


def test_shadow_hits_are_marked() -> None:
    ruleset = Ruleset.compile([RuleSpec("try_me", "amount > 0", score=10, mode="shadow")])
    [hit] = ruleset.evaluate(features()).hits
    assert hit.shadow


def test_projection_keeps_semantics_of_has_and_map_iteration() -> None:
    # The ruleset hands CEL only the paths its rules read; these rules would notice if it cut too much.
    ruleset = Ruleset.compile(
        [
            RuleSpec("has_present", "has(velocity.ip.h1)", score=1),
            RuleSpec("has_absent", "has(velocity.ip.y1)", score=1),
            RuleSpec("all_windows", "velocity.card.all(w, velocity.card[w].count == 0)", score=1),
            RuleSpec("whole_map", "size(velocity.ip.h1) == 4", score=1),
        ]
    )
    evaluation = ruleset.evaluate(features())
    assert evaluation.errors == ()
    assert [h.rule.id for h in evaluation.hits] == ["has_present", "all_windows", "whole_map"]


def test_empty_ruleset_evaluates_to_nothing() -> None:
    ruleset = Ruleset.compile([])
    assert len(ruleset) == 0
    assert ruleset.evaluate(features()).hits == ()
