"""Turn rule hits into one decision: score thresholds and forced actions, most severe wins.

The decision is the most severe of the forced actions of active hits and of the action the
total score reaches (``allow < challenge < review < block``, DESIGN §9). Shadow hits are
carried along for the logs and never change the score or the action. Every decision records
the ruleset version it was made under and why (``reasons``, with the values each rule saw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from risk.rules import Action, Hit, Ruleset

# Displayed scores stay in a fixed range so dashboards and clients can rely on it.
SCORE_MIN = 0
SCORE_MAX = 1000


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Score at or above which each action applies."""

    challenge: int = 50
    review: int = 80
    block: int = 100

    def __post_init__(self) -> None:
        # challenge >= 1 so that a payment no rule scored is always allowed by score.
        if not 1 <= self.challenge <= self.review <= self.block:
            raise ValueError(
                f"risk thresholds must satisfy 1 <= challenge <= review <= block, got "
                f"{self.challenge}/{self.review}/{self.block}"
            )

    def action_for(self, score: int) -> Action:
        if score >= self.block:
            return Action.BLOCK
        if score >= self.review:
            return Action.REVIEW
        if score >= self.challenge:
            return Action.CHALLENGE
        return Action.ALLOW


DEFAULT_THRESHOLDS = Thresholds()


def _json_safe(value: Any) -> Any:
    """Observed values as the API and the audit log can carry them."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return round(value, 2) if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v) for v in value]
    return str(value)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rule counted: its id, message, what it saw and what it contributed."""

    rule: str
    message: str
    observed: dict[str, Any]
    score: int
    action: str | None

    @classmethod
    def of(cls, hit: Hit) -> Reason:
        spec = hit.rule.spec
        action = spec.action.label if spec.action is not None else None
        return cls(spec.id, spec.message, hit.observed, spec.score, action)

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "observed": _json_safe(self.observed),
            "score": self.score,
            "action": self.action,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of screening one payment."""

    action: Action
    score: int
    reasons: tuple[Reason, ...]
    shadow: tuple[Reason, ...]
    ruleset_version: str
    errors: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        """The payment's ``risk`` field (DESIGN §6); shadow hits and errors are for logs only."""
        return {
            "score": self.score,
            "decision": self.action.label,
            "reasons": [r.as_json() for r in self.reasons],
            "ruleset": self.ruleset_version,
        }


def decide(
    ruleset: Ruleset, features: Mapping[str, Any], thresholds: Thresholds = DEFAULT_THRESHOLDS
) -> Decision:
    """Screen one payment's *features* (see ``risk.features``) with *ruleset*; never raises."""
    evaluation = ruleset.evaluate(features)
    active = [h for h in evaluation.hits if not h.shadow]
    raw = sum(h.rule.spec.score for h in active)
    # Thresholds read the displayed score, so what a client sees explains the action it got.
    score = min(max(raw, SCORE_MIN), SCORE_MAX)
    forced = (h.rule.spec.action for h in active if h.rule.spec.action is not None)
    action = max(forced, default=Action.ALLOW)
    return Decision(
        action=max(action, thresholds.action_for(score)),
        score=score,
        reasons=tuple(Reason.of(h) for h in active),
        shadow=tuple(Reason.of(h) for h in evaluation.hits if h.shadow),
        ruleset_version=ruleset.version,
        errors=evaluation.errors,
    )


FEATURES_UNAVAILABLE = "features_unavailable"


def fail_closed(ruleset_version: str, why: str) -> Decision:
    """The decision when features could not be read and the tenant fails closed: hold for review.

    Review, not block: the payment may well be good, and an operator can release it, whereas
    a block would turn a database hiccup into lost customers.
    """
    reason = Reason(FEATURES_UNAVAILABLE, why, {}, 0, Action.REVIEW.label)
    return Decision(Action.REVIEW, 0, (reason,), (), ruleset_version, ())
