"""Rules from settings: ``[[risk.rules]]`` entries as :class:`RuleSpec`, and the dev rules of
``config/payhub.toml`` (DESIGN §12) for tests and ``load/risk_bench.py``.

The dev config is the one place the default rules are written; they are tuned so that an ordinary
small payment (a known device or none, no velocity, no list hit) is ``allow`` with score 0, and
each rule stands for one fraud pattern named by its id.
"""

from __future__ import annotations

from config.settings import DEFAULT_CONFIG, RiskRuleSettings, load_settings
from risk.rules import Action, Ruleset, RuleSpec


def spec_of(rule: RiskRuleSettings) -> RuleSpec:
    action = Action.parse(rule.action) if rule.action is not None else None
    return RuleSpec(rule.id, rule.when, rule.score, action, rule.mode, rule.message)


def dev_rules() -> tuple[RuleSpec, ...]:
    """The dev config's shared rules (reads config/payhub.toml)."""
    return tuple(spec_of(rule) for rule in load_settings(DEFAULT_CONFIG, env={}).risk.rules)


def dev_ruleset() -> Ruleset:
    return Ruleset.compile(dev_rules())
