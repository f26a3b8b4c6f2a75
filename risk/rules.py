"""Risk rules: CEL expressions from config, compiled once, evaluated per payment.

A rule either adds a score (which may be negative), forces an action, or both, and may run in
``shadow`` mode: evaluated and reported, never applied, so a tenant can try a rule on live
traffic before trusting it (DESIGN §9). Rules are compiled when config is loaded, so a typo is
a start-up (or reload) failure rather than a silent hole in every payment's screening.

    RuleError        a rule that does not compile or is malformed; names the rule id

Evaluation never raises: a rule whose expression fails at run time (a missing key, a division
by zero, a result that is not a bool) does not match, and its id is returned in
``Evaluation.errors`` so the caller can count and alert on it. One broken rule must not take
the others down with it, nor fail the payment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import cel

from risk.paths import Trie, build_trie, lookup, project, referenced_paths

Mode = Literal["active", "shadow"]
_MODES: tuple[Mode, ...] = ("active", "shadow")
_RULE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class Action(IntEnum):
    """What the risk engine asks for, ordered by severity so ``max()`` picks the decision."""

    ALLOW = 0
    CHALLENGE = 1
    REVIEW = 2
    BLOCK = 3

    @property
    def label(self) -> str:
        """The wire name (``"allow"`` … ``"block"``) used in config and the API."""
        return self.name.lower()

    def __str__(self) -> str:
        return self.label

    @classmethod
    def parse(cls, text: str) -> Action:
        """The action named *text* (case-insensitive); ValueError for anything else."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(a.label for a in cls)
            raise ValueError(f"unknown risk action {text!r} (expected one of {names})") from None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """One rule as config gives it; validated when compiled into a ``Rule``."""

    id: str
    when: str
    score: int = 0
    action: Action | None = None
    mode: Mode = "active"
    message: str = ""


class RuleError(Exception):
    """A rule that cannot be compiled: bad CEL, or a definition that makes no sense."""

    def __init__(self, rule_id: str, problem: str) -> None:
        super().__init__(f"risk rule {rule_id!r}: {problem}")
        self.rule_id = rule_id
        self.problem = problem


def _validate(spec: RuleSpec) -> None:
    if not _RULE_ID.fullmatch(spec.id):
        raise RuleError(spec.id, "id must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    if not spec.when.strip():
        raise RuleError(spec.id, "'when' is empty")
    if isinstance(spec.score, bool) or not isinstance(spec.score, int):
        raise RuleError(spec.id, f"score must be an integer, not {spec.score!r}")
    if spec.action is not None and not isinstance(spec.action, Action):
        raise RuleError(spec.id, f"action must be an Action, not {spec.action!r}")
    if spec.score == 0 and spec.action is None:
        raise RuleError(spec.id, "a rule needs a non-zero score, an action, or both")
    if spec.mode not in _MODES:
        raise RuleError(spec.id, f"mode must be 'active' or 'shadow', not {spec.mode!r}")


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: its spec, the CEL program, and the dotted feature paths it reads."""

    spec: RuleSpec
    program: cel.Program
    paths: tuple[str, ...]

    @classmethod
    def compile(cls, spec: RuleSpec) -> Rule:
        _validate(spec)
        try:
            program = cel.compile(spec.when)
        except ValueError as exc:
            raise RuleError(spec.id, f"invalid CEL: {exc}") from exc
        return cls(spec, program, referenced_paths(spec.when, program.variables()))

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def shadow(self) -> bool:
        return self.spec.mode == "shadow"

    def observe(self, features: Mapping[str, Any]) -> dict[str, Any]:
        """The value of each path this rule reads (None where the features lack it)."""
        return {path: lookup(features, path) for path in self.paths}


@dataclass(frozen=True, slots=True)
class Hit:
    """A rule that matched, with the values it saw."""

    rule: Rule
    observed: dict[str, Any]
    shadow: bool


@dataclass(frozen=True, slots=True)
class Evaluation:
    """All hits in ruleset order, and the ids of rules that failed at run time."""

    hits: tuple[Hit, ...]
    errors: tuple[str, ...]


def _canonical(spec: RuleSpec) -> dict[str, Any]:
    # The message is left out: rewording an explanation does not change a decision.
    action = spec.action.label if spec.action is not None else None
    return {"id": spec.id, "when": spec.when, "score": spec.score, "action": action, "mode": spec.mode}


def _version(specs: Sequence[RuleSpec]) -> str:
    canonical = json.dumps([_canonical(s) for s in specs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


class Ruleset:
    """An immutable, compiled list of rules with a version stamped on every decision.

    The version is a hash of the rule definitions (not of the file they came from), so the
    same rules give the same version on every host and after every reload, and an audit of a
    past decision can tell which rules made it.
    """

    __slots__ = ("_trie", "rules", "version")

    def __init__(self, rules: Sequence[Rule], version: str) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.version = version
        self._trie: Trie = build_trie(p for r in self.rules for p in r.paths)

    @classmethod
    def compile(cls, specs: Iterable[RuleSpec]) -> Ruleset:
        specs = tuple(specs)
        seen: set[str] = set()
        rules = []
        for spec in specs:
            if spec.id in seen:
                raise RuleError(spec.id, "duplicate rule id")
            seen.add(spec.id)
            rules.append(Rule.compile(spec))
        return cls(rules, _version(specs))

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"Ruleset(version={self.version!r}, rules={[r.id for r in self.rules]!r})"

    def evaluate(self, features: Mapping[str, Any]) -> Evaluation:
        """Run every rule against *features* (the CEL activation); never raises."""
        # Converting to CEL values dominates the cost, so convert once, only what rules read.
        try:
            shared: cel.Context | None = cel.Context(variables=project(features, self._trie))
        except Exception:  # a value CEL cannot represent: fall back to one context per rule
            shared = None
        hits: list[Hit] = []
        errors: list[str] = []
        for rule in self.rules:
            try:
                context = shared
                if context is None:
                    context = cel.Context(variables=project(features, build_trie(rule.paths)))
                result = rule.program.execute(context)
            except Exception:  # CEL raises KeyError, RuntimeError, ZeroDivisionError, …: all "no match"
                errors.append(rule.id)
                continue
            if not isinstance(result, bool):
                errors.append(rule.id)
            elif result:
                hits.append(Hit(rule, rule.observe(features), rule.shadow))
        return Evaluation(tuple(hits), tuple(errors))
