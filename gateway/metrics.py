"""Prometheus metrics (``payhub_`` prefix), one registry per application.

A registry per app keeps tests independent (several apps in one process). With
``--workers N`` each process writes to ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics``
aggregates the files, so any worker answers for the whole fleet.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# Latency buckets sized for an API whose budget is tens of milliseconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class PoolCollector(Collector):
    """Reads pool occupancy at scrape time instead of updating a gauge on every acquire."""

    def __init__(self, stats: Callable[[], tuple[int, int, int] | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats()
        family = GaugeMetricFamily(
            "payhub_db_pool_connections", "Database pool connections by state", labels=["state"]
        )
        if stats is not None:
            size, idle, maximum = stats
            family.add_metric(["in_use"], size - idle)
            family.add_metric(["idle"], idle)
            family.add_metric(["max"], maximum)
        yield family


class RouteMetrics:
    """``payhub_http_requests_total`` and ``payhub_http_request_duration_seconds`` of one route template
    and method (``Metrics.http_route``): children bound on first use and kept, one counter per status."""

    __slots__ = ("_by_status", "_histogram", "_latency", "_method", "_requests", "_route")

    def __init__(self, requests: Counter, histogram: Histogram, route: str, method: str) -> None:
        self._requests, self._histogram, self._route, self._method = requests, histogram, route, method
        self._by_status: dict[int, Counter] = {}
        self._latency: Histogram | None = None  # bound by the first request: unused routes export nothing

    def observe(self, status: int, seconds: float) -> None:
        counter = self._by_status.get(status)
        if counter is None:
            counter = self._by_status[status] = self._requests.labels(self._route, self._method, str(status))
        counter.inc()
        latency = self._latency
        if latency is None:
            latency = self._latency = self._histogram.labels(self._route, self._method)
        latency.observe(seconds)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "payhub_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_latency = Histogram(
            "payhub_http_request_duration_seconds",
            "HTTP request latency by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "payhub_tls_handshake_failures",
            "Refused or failed TLS handshakes by reason",
            ["reason"],
            registry=r,
        )
        self.tls_handshakes = Counter(
            "payhub_tls_handshakes",
            "Completed TLS handshakes",
            registry=r,
        )
        self.tls_reloads = Counter(
            "payhub_tls_reloads",
            "Certificate/CRL reloads by outcome",
            ["outcome"],
            registry=r,
        )
        self.authentication_failures = Counter(
            "payhub_authentication_failures",
            "Requests refused because the certificate identity is not accepted",
            registry=r,
        )
        # Traffic protection (gateway/traffic, docs/traffic.md).
        self.rate_limited_requests = Counter(
            "payhub_rate_limited_requests",
            "Requests refused with 429 by limiter (tenant, customer, customer_ip, concurrency), route class",
            ["limiter", "route_class"],
            registry=r,
        )
        self.rate_limit_storage_errors = Counter(
            "payhub_rate_limit_storage_errors",
            "Rate-limit storage (Redis) failures; limits fell back to per-process memory (fail open)",
            registry=r,
        )
        self.shed_requests = Counter(
            "payhub_shed_requests",
            "Requests refused with 503 by the load shedder, by route class",
            ["route_class"],
            registry=r,
        )
        self.inflight_requests = Gauge(
            "payhub_inflight_requests",
            "Authenticated requests in progress (sampled by the lag monitor)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.event_loop_lag = Gauge(
            "payhub_event_loop_lag_seconds",
            "Smoothed event-loop lag (EWMA of timer overshoot) used by the load shedder",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.refused_requests = Counter(
            "payhub_refused_requests",
            "Hostile or malformed input refused before a handler ran, by reason",
            ["reason"],
            registry=r,
        )
        self.build_info = Gauge(
            "payhub_build_info",
            "Build information",
            ["version"],
            registry=r,
            multiprocess_mode="max",
        )

        self.connector_calls = Counter(
            "payhub_connector_calls", "Outbound connector calls by operation and outcome",
            ["connector", "operation", "outcome"], registry=r,
        )  # fmt: skip
        self.connector_latency = Histogram(
            "payhub_connector_call_duration_seconds", "Outbound connector call latency",
            ["connector", "operation"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.connector_circuit_state = Gauge(
            "payhub_connector_circuit_state", "Circuit breaker per connector: 0 closed, 1 half-open, 2 open",
            ["connector"], registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.payments = Counter(
            "payhub_payments", "Payment outcomes by method, status and connector",
            ["method", "status", "connector"], registry=r,
        )  # fmt: skip
        self.resolver_passes = Counter(
            "payhub_resolver_passes", "Resolver passes over due attempts, by outcome (ok, error)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.resolver_items = Counter(
            "payhub_resolver_items", "Attempts the resolver looked at, by operation and result",
            ["operation", "result"], registry=r,
        )  # fmt: skip
        self.resolver_last_pass_age = Gauge(
            "payhub_resolver_last_pass_age_seconds", "Seconds since the resolver last completed a pass",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip

        self.oldest_processing_payment_age = Gauge(
            "payhub_oldest_processing_payment_age_seconds",
            "Seconds since the oldest payment still processing last changed (0: none), set by the resolver",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        # The manual queue (docs/faults.md): attempts whose inquiry budget is spent with no policy to
        # settle them. The gauge is counted by the resolver's worker; its alert pages when it is > 0.
        self.manual_reviews = Counter(
            "payhub_manual_reviews", "Attempts put in the manual queue, by operation and reason",
            ["operation", "reason"], registry=r,
        )  # fmt: skip
        self.manual_review_attempts = Gauge(
            "payhub_manual_review_attempts", "Attempts waiting in the manual queue for an operator",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        # Audit sealing (gateway/workers/audit_sealer.py): committed events not yet linked into the chain.
        self.audit_unsealed_events = Gauge(
            "payhub_audit_unsealed_events", "Committed audit events not yet linked into the hash chain",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.audit_seal_lag = Gauge(
            "payhub_audit_seal_lag_seconds", "Age of the oldest audit event not yet sealed (0: none)",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip

        self.risk_decisions = Counter(
            "payhub_risk_decisions", "Risk decisions by decision (allow, challenge, review, block)",
            ["decision"], registry=r,
        )  # fmt: skip
        self.risk_rule_hits = Counter(
            "payhub_risk_rule_hits", "Rules that matched, by rule id and mode (active, shadow)",
            ["rule", "mode"], registry=r,
        )  # fmt: skip
        self.risk_feature_failures = Counter(
            "payhub_risk_feature_failures", "Feature reads that failed or timed out, by fail mode applied",
            ["fail_mode"], registry=r,
        )  # fmt: skip
        self.risk_rule_errors = Counter(
            "payhub_risk_rule_errors", "Rules whose evaluation raised (counted as not matched)",
            ["rule"], registry=r,
        )  # fmt: skip
        self.risk_challenges = Counter(
            "payhub_risk_challenges", "Step-up challenges by kind and result (issued, passed, wrong, …)",
            ["kind", "result"], registry=r,
        )  # fmt: skip

        # Webhooks (gateway/workers/webhooks.py, docs/webhooks.md).
        self.webhook_deliveries = Counter(
            "payhub_webhook_deliveries", "Webhook delivery attempts by outcome (delivered, retry, dead)",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.webhook_outbox_lag = Gauge(
            "payhub_webhook_outbox_lag_seconds", "Age of the oldest due, pending webhook delivery (0: none)",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip
        self.webhook_dead_deliveries = Gauge(
            "payhub_webhook_dead_deliveries", "Dead webhook deliveries not redelivered (dead-letter queue)",
            registry=r, multiprocess_mode="max",
        )  # fmt: skip

        # Reminders and messages to people (gateway/workers/reminders.py, docs/notifications.md).
        self.reminder_notices = Counter(
            "payhub_reminder_notices", "bill.due_soon notices emitted, and bill checks that failed",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.notification_messages = Counter(
            "payhub_notification_messages", "SMS and e-mail to people by channel and outcome "
            "(sent, deferred for quiet hours, retry, dead)",
            ["channel", "outcome"], registry=r,
        )  # fmt: skip

        self._http_routes: dict[tuple[str, str], RouteMetrics] = {}

    def http_route(self, route: str, method: str) -> RouteMetrics:
        """The request metrics of ``route`` (a template, or "unmatched") and ``method``, made once."""
        key = (route, method)
        bound = self._http_routes.get(key)
        if bound is None:
            bound = self._http_routes[key] = RouteMetrics(
                self.http_requests, self.http_latency, route, method
            )
        return bound

    def watch_pool(self, stats: Callable[[], tuple[int, int, int] | None]) -> None:
        self.registry.register(PoolCollector(stats))

    def render(self) -> bytes:
        if (directory := multiprocess_dir()) is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
