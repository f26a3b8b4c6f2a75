"""Screening a payment before it reaches a connector (DESIGN §9): features → rules → decision.

The rules are compiled once per tenant at start-up and again on a config reload; a rule that
does not compile stops start-up (ConfigError naming it) and leaves a reload's rules as they were.
The features a payment's keys have in the database are read in one statement under
``risk.feature_timeout``; when that read fails, the tenant's fail mode decides: ``open`` screens
on the request alone (velocity and history empty, the configured lists still apply), ``closed``
holds the payment for review.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from redis.exceptions import RedisError

from config.settings import ConfigError, RiskSettings
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.services.fx import FxRates
from gateway.store import risk as store
from gateway.store.risk import RiskKeys, StoredFeatures
from gateway.store.types import Connection, Rider
from gateway.store.velocity_redis import RedisVelocity
from risk.decision import Decision, Thresholds, decide, fail_closed
from risk.defaults import spec_of
from risk.features import KEY_KINDS, WINDOWS, History, PaymentFacts, Velocity, VelocityCell, build_features
from risk.geo import IpCountryLookup
from risk.rules import RuleError, Ruleset

log = get_logger("gateway.risk")


@dataclass(frozen=True, slots=True)
class TenantRules:
    ruleset: Ruleset
    thresholds: Thresholds
    fail_mode: str


@dataclass(frozen=True, slots=True)
class Screening:
    """A payment's decision and what it is counted under."""

    decision: Decision
    keys: RiskKeys
    locked_until: datetime | None  # the customer's step-up is locked until then


def compile_rules(settings: RiskSettings, tenants: list[str]) -> dict[str, TenantRules]:
    """Every tenant's rules; ConfigError naming the rule that does not compile."""
    compiled: dict[str, TenantRules] = {}
    for tenant in tenants:
        own = settings.tenants.get(tenant)
        rules = [*settings.rules, *(own.rules if own else [])]
        try:
            ruleset = Ruleset.compile(spec_of(rule) for rule in rules)
        except (RuleError, ValueError) as exc:
            raise ConfigError(f"risk.rules: {exc}") from exc
        t = own.thresholds if own and own.thresholds else settings.thresholds
        compiled[tenant] = TenantRules(
            ruleset,
            Thresholds(t.challenge, t.review, t.block),
            own.fail_mode if own and own.fail_mode else settings.fail_mode,
        )
    return compiled


class RiskService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: RiskSettings,
        *,
        tenants: list[str],
        usd: FxRates,
        ip_countries: IpCountryLookup,
        metrics: Metrics,
        velocity: RedisVelocity | None = None,
    ) -> None:
        self._pool = pool
        self._velocity = velocity  # Redis counters (PAYHUB_REDIS_URL), else PostgreSQL's
        self._usd = usd
        self._ip_countries = ip_countries
        self._metrics = metrics
        self.settings = settings
        self._rules = compile_rules(settings, tenants)
        self._deny = frozenset(settings.deny)
        self._allow = frozenset(settings.allow)

    def reload(self, settings: RiskSettings, tenants: list[str]) -> None:
        """Swap every tenant's rules at once (a request sees the old set or the new one, never a mix)."""
        rules = compile_rules(settings, tenants)  # raises before anything changes
        self.settings, self._rules = settings, rules
        self._deny, self._allow = frozenset(settings.deny), frozenset(settings.allow)
        log.info("risk.rules_reloaded", versions={t: r.ruleset.version for t, r in rules.items()})

    def amount_usd(self, amount: int, currency: str) -> float | None:
        return self._usd.amount_usd(amount, currency)

    def rider(self, facts: PaymentFacts, card_fingerprint: str | None) -> Rider:
        """The payment's feature read, to ride in its first statement (the vault's, for a card)."""
        return store.feature_rider(facts.tenant, self.keys(facts, card_fingerprint), _list_keys(facts))

    def keys(self, facts: PaymentFacts, card_fingerprint: str | None) -> RiskKeys:
        """The keys the payment is counted (and its velocity read) under."""
        return _keys(facts, card_fingerprint, counted_here=self._velocity is None)

    async def screen(
        self, facts: PaymentFacts, *, card_fingerprint: str | None, read: StoredFeatures | None = None
    ) -> Screening:
        """Decide; ``read`` is the feature read when it rode in an earlier statement, else it is
        read here under ``feature_timeout`` (a failure then applies the tenant's fail mode)."""
        rules = self._rules.get(facts.tenant)
        if rules is None:  # a tenant added by a reload after start-up: the shared rules
            rules = compile_rules(self.settings, [facts.tenant])[facts.tenant]
            self._rules = {**self._rules, facts.tenant: rules}
        keys = self.keys(facts, card_fingerprint)
        list_keys = _list_keys(facts)
        static_deny = tuple(f"{k}:{v}" for k, v in list_keys if f"{k}:{v}" in self._deny)
        static_allow = tuple(f"{k}:{v}" for k, v in list_keys if f"{k}:{v}" in self._allow)
        try:
            stored = read
            if stored is None:
                async with asyncio.timeout(self.settings.feature_timeout), self._pool.acquire() as conn:
                    stored = await store.read_features(
                        conn, store.feature_rider(facts.tenant, keys, list_keys)
                    )
            if self._velocity is not None:
                async with asyncio.timeout(self.settings.feature_timeout):
                    counted = await self._velocity.read(facts.tenant, keys)
                stored = dataclasses.replace(stored, velocity=counted)
        except (TimeoutError, asyncpg.PostgresError, RedisError, OSError) as exc:
            self._metrics.risk_feature_failures.labels(rules.fail_mode).inc()
            log.warning("risk.features_unavailable", fail_mode=rules.fail_mode, error=type(exc).__name__)
            if rules.fail_mode == "closed":
                decision = fail_closed(rules.ruleset.version, "Risk features could not be read.")
                return self._decided(facts, Screening(decision, keys, None))
            stored = None
        velocity, history, locked_until = Velocity.empty(), History(), None
        if stored is not None:
            velocity = _velocity(stored.velocity)
            deny = [hit.split(" ", 1)[1] for hit in stored.list_hits if hit.startswith("deny ")]
            allow = [hit.split(" ", 1)[1] for hit in stored.list_hits if hit.startswith("allow ")]
            history = History(
                customer_age_days=_age_days(stored.customer_first_seen),
                device_known=stored.device_known,
                otp_failures_24h=stored.otp_failures_24h,
                deny_hits=tuple(dict.fromkeys((*static_deny, *deny))),
                allow_hits=tuple(dict.fromkeys((*static_allow, *allow))),
            )
            locked_until = stored.locked_until
        else:
            history = History(deny_hits=static_deny, allow_hits=static_allow)
        features = build_features(facts, velocity, history, self._ip_countries)
        decision = decide(rules.ruleset, features, rules.thresholds)
        return self._decided(facts, Screening(decision, keys, locked_until))

    async def counted(self, tenant: str, payment_id: str, keys: RiskKeys) -> None:
        """After the statement that records a payment: count it in Redis (PostgreSQL counters are
        written by that statement itself). A failure is logged and counted, never the payment's."""
        if self._velocity is None or not keys.pairs:
            return
        try:
            await self._velocity.count(tenant, payment_id, keys)
        except (RedisError, OSError) as exc:
            self._metrics.risk_feature_failures.labels("count").inc()
            log.warning("risk.count_failed", error=type(exc).__name__)

    async def declined(self, conn: Connection, payment_id: str) -> None:
        """A decline just applied, counted under the payment's keys in Redis (PostgreSQL's counters
        are counted by the settlement statement itself)."""
        if self._velocity is None:
            return
        found = await store.risk_keys_of(conn, payment_id=payment_id)
        if found is None:
            return
        tenant, keys = found
        try:
            await self._velocity.count_decline(tenant, payment_id, keys)
        except (RedisError, OSError) as exc:
            self._metrics.risk_feature_failures.labels("count").inc()
            log.warning("risk.count_failed", error=type(exc).__name__)

    def _decided(self, facts: PaymentFacts, screening: Screening) -> Screening:
        decision = screening.decision
        self._metrics.risk_decisions.labels(decision.action.label).inc()
        for reason in decision.reasons:
            self._metrics.risk_rule_hits.labels(reason.rule, "active").inc()
        for reason in decision.shadow:
            self._metrics.risk_rule_hits.labels(reason.rule, "shadow").inc()
            log.info("risk.shadow_hit", rule=reason.rule, observed=reason.observed, tenant=facts.tenant)
        for rule in decision.errors:
            self._metrics.risk_rule_errors.labels(rule).inc()
        return screening


def _keys(facts: PaymentFacts, card_fingerprint: str | None, *, counted_here: bool) -> RiskKeys:
    candidates = (
        ("card", card_fingerprint),
        ("customer", facts.customer_id),
        ("ip", facts.ip),
        ("device", facts.device_id),
        ("msisdn", facts.msisdn),
    )
    usd = facts.amount_usd
    return RiskKeys(
        pairs=tuple((kind, key) for kind, key in candidates if key),
        amount_usd_cents=round(usd * 100) if usd is not None else 0,
        customer_id=facts.customer_id,
        device_id=facts.device_id,
        msisdn=facts.msisdn,
        counted_here=counted_here,
    )


def _list_keys(facts: PaymentFacts) -> list[tuple[str, str]]:
    candidates = (
        ("ip", facts.ip),
        ("email", facts.email.lower() if facts.email else None),
        ("customer", facts.customer_id),
        ("device", facts.device_id),
        ("msisdn", facts.msisdn),
        ("bin", facts.card_bin),
    )
    return [(kind, value) for kind, value in candidates if value]


def _velocity(stored: dict[str, dict[str, dict[str, float]]]) -> Velocity:
    cells = {}
    for kind in KEY_KINDS:
        for window in WINDOWS:
            cell = stored.get(kind, {}).get(window)
            if cell:
                cells[(kind, window)] = VelocityCell(
                    count=int(cell.get("count", 0)),
                    amount_usd=float(cell.get("amount_usd", 0.0)),
                    declines=int(cell.get("declines", 0)),
                    distinct_msisdn=int(cell.get("distinct_msisdn", 0)),
                )
    return Velocity(cells)


def _age_days(first_seen: datetime | None) -> int | None:
    if first_seen is None:
        return None
    return max(0, (datetime.now(UTC) - first_seen).days)
