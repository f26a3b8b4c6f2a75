"""A real Prometheus (Debian's ``prometheus`` binary) scraping a live ``payhub serve --sandbox``.

One gateway and one Prometheus per module: Prometheus scrapes the ops port every second and evaluates
deploy/prometheus/alerts.yml every second. The tests drive card payments, bad requests and a refused
TLS handshake, then ask Prometheus's HTTP API that the series exist, that every alert rule loaded
and evaluates cleanly, that the error-rate expression computes what the traffic says, and that every
PromQL target of the Grafana dashboard (deploy/grafana/payhub.json) runs without a query error.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from crypto.pki import PkiPaths
from gateway.store.embedded import with_database
from tests.support import postgres
from tests.support.mtls import client, client_context
from tests.support.processes import (
    REPO,
    config_with_free_sandbox_ports,
    free_port,
    payhub_env,
    start_payhub,
    wait_ready,
)

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "payhub.json"
STOP_TIMEOUT = 20.0
WAIT = 20.0  # seconds to wait for Prometheus to see something

GOOD_CARDS = ("4111111111111111", "5555555555554444", "6212345678901265")
DECLINED_CARD = "4000000000000002"


@dataclass(frozen=True, slots=True)
class Traffic:
    """What the module drove after every series existed, and when that window starts.

    Every series the rate checks use was created by the warm-up and scraped before ``since``, so
    within a window starting there they all have samples at the same scrape times: rate()
    extrapolates them alike and a ratio of rates is exactly the ratio of the requests."""

    ok: int  # 2xx answers
    bad: int  # 4xx answers
    since: float  # Prometheus time (s): after the warm-up was scraped, before the driven traffic


@dataclass(frozen=True, slots=True)
class Stack:
    prometheus: str  # base URL of the Prometheus HTTP API
    ops_port: int
    traffic: Traffic
    log: Path


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT)


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip(
            "prometheus not found: `make deps-system` installs Debian's prometheus package "
            "(needs apt-get and root or password-less sudo)"
        )
    return path


def prometheus_config(directory: Path, ops_port: int) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "payhub", "static_configs": [{"targets": [f"127.0.0.1:{ops_port}"]}]}
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def api(base: str, path: str, **params: str) -> Any:
    """GET a Prometheus API path; returns the decoded body whatever the status (errors are JSON too)."""
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # plain HTTP to 127.0.0.1
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def query(base: str, expr: str, **params: str) -> list[dict[str, Any]]:
    body = api(base, "/api/v1/query", query=expr, **params)
    assert body["status"] == "success", (expr, body)
    return list(body["data"]["result"])


def scalar(base: str, expr: str, **params: str) -> float:
    [sample] = query(base, expr, **params)
    return float(sample["value"][1])


def last_scrape(base: str) -> float:
    return scalar(base, 'timestamp(up{job="payhub"})')


def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Until ``check`` returns something truthy; its last AssertionError (or ``what``) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        else:
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.25)


def scrapes(base: str) -> float:
    """How many times Prometheus has scraped the gateway so far (its own per-target counter)."""
    result = query(base, 'count_over_time(up{job="payhub"}[10m])')
    return float(result[0]["value"][1]) if result else 0.0


def wait_for_scrapes(base: str, n: int) -> None:
    start = scrapes(base)
    eventually(lambda: scrapes(base) >= start + n, f"{n} more scrapes")


async def pay(session: aiohttp.ClientSession, base: str, number: str, key: str) -> int:
    body = {
        "amount": 12850,
        "currency": "CNY",
        "payment_method": {
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        },
    }
    async with session.post(f"{base}/v1/payments", json=body, headers={"Idempotency-Key": key}) as resp:
        await resp.read()
        return resp.status


async def bad_request(session: aiohttp.ClientSession, base: str, key: str) -> int:
    body = {"amount": -5, "currency": "CNY", "payment_method": {"type": "card"}}
    async with session.post(f"{base}/v1/payments", json=body, headers={"Idempotency-Key": key}) as resp:
        await resp.read()
        return resp.status


async def unknown_payment(session: aiohttp.ClientSession, base: str) -> int:
    async with session.get(f"{base}/v1/payments/pay_doesnotexist") as resp:
        await resp.read()
        return resp.status


async def refused_handshake(pki: PkiPaths, base: str) -> None:
    """A client without a certificate: the gateway refuses the TLS handshake."""
    connector = aiohttp.TCPConnector(ssl=client_context(pki, None))
    async with aiohttp.ClientSession(connector=connector) as session:
        with pytest.raises((aiohttp.ClientError, OSError)):  # ssl.SSLError is an OSError
            async with session.get(f"{base}/v1/ping") as resp:
                await resp.read()


async def warm_up(pki: PkiPaths, base: str) -> None:
    """One answer of every kind, so every series the checks rate exists before they are counted."""
    async with client(pki, "acme") as session:
        assert await pay(session, base, GOOD_CARDS[0], "warm-1") in (200, 201)
        assert await pay(session, base, DECLINED_CARD, "warm-2") in (200, 201, 402)
        assert await bad_request(session, base, "warm-3") == 400
        assert await unknown_payment(session, base) == 404
    await refused_handshake(pki, base)


async def drive(pki: PkiPaths, base: str, since: float) -> Traffic:
    ok = bad = 0
    async with client(pki, "acme") as session:
        for i, card in enumerate((*GOOD_CARDS, GOOD_CARDS[0])):
            status = await pay(session, base, card, f"pay-{i}")
            assert status in (200, 201), status
            ok += 1
        for i in range(3):
            assert await bad_request(session, base, f"bad-{i}") == 400
            bad += 1
        for _ in range(2):
            assert await unknown_payment(session, base) == 404
            bad += 1
    return Traffic(ok=ok, bad=bad, since=since)


@pytest.fixture(scope="module")
def stack(
    pg_admin_url: str, pg_template: str, payhub_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    binary = prometheus_binary()
    workdir = tmp_path_factory.mktemp("prometheus-e2e")
    database = asyncio.run(postgres.clone_database(pg_admin_url, pg_template))
    api_port, ops_port, prom_port = free_port(), free_port(), free_port()
    env = payhub_env(
        PAYHUB_CONFIG=str(config_with_free_sandbox_ports(workdir)),
        PAYHUB_HOME=str(payhub_home),
        PAYHUB_DATABASE_URL=with_database(pg_admin_url, database),
        PAYHUB_LISTEN=f"127.0.0.1:{api_port}",
        PAYHUB_OPS_LISTEN=f"127.0.0.1:{ops_port}",
    )
    log = workdir / "serve.log"
    gateway = start_payhub("serve", "--sandbox", env=env, stdout=log)
    prom_log = workdir / "prometheus.log"
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        with prom_log.open("wb") as out:
            prometheus = subprocess.Popen(
                [
                    binary,
                    f"--config.file={prometheus_config(workdir, ops_port)}",
                    f"--storage.tsdb.path={workdir / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                    "--log.level=warn",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=workdir,
            )
        base = f"http://127.0.0.1:{prom_port}"
        asyncio.run(wait_ready(ops_port))
        eventually(lambda: _ready(base, prometheus), "Prometheus to be ready")
        pki = PkiPaths(payhub_home / "pki")
        gateway_url = f"https://localhost:{api_port}"
        asyncio.run(warm_up(pki, gateway_url))
        eventually(
            lambda: query(base, 'payhub_http_requests_total{status="404"}'), "the warm-up to be scraped"
        )
        wait_for_scrapes(base, 1)
        # Half an interval before the last scrape: after the one that first showed the warm-up.
        since = last_scrape(base) - 0.5
        traffic = asyncio.run(drive(pki, gateway_url, since))
        wait_for_scrapes(base, 2)
        yield Stack(prometheus=base, ops_port=ops_port, traffic=traffic, log=log)
    except BaseException:
        tail = prom_log.read_text(errors="replace")[-2000:] if prom_log.exists() else ""
        print(f"prometheus log:\n{tail}\ngateway stderr:\n{_tail(log.with_suffix('.err'))}")
        raise
    finally:
        if prometheus is not None:
            _stop(prometheus)
        _stop(gateway)
        postgres.drop_database(pg_admin_url, database)


def _ready(base: str, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, "prometheus exited"
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# ---- series -------------------------------------------------------------------------------------

EXPECTED_SERIES = (
    'payhub_http_requests_total{route="/v1/payments",method="POST",status="400"}',
    'payhub_http_requests_total{route="/v1/payments/{id}",method="GET",status="404"}',
    'payhub_http_request_duration_seconds_bucket{route="/v1/payments",method="POST"}',
    'payhub_payments_total{method="card",status="succeeded",connector="iso8583_card"}',
    'payhub_payments_total{method="card",status="failed",connector="iso8583_card"}',
    'payhub_connector_calls_total{connector="iso8583_card"}',
    'payhub_connector_call_duration_seconds_bucket{connector="iso8583_card"}',
    'payhub_connector_circuit_state{connector="iso8583_card"}',
    "payhub_risk_decisions_total",
    "payhub_tls_handshakes_total",
    "payhub_tls_handshake_failures_total",
    'payhub_db_pool_connections{state="in_use"}',
    "payhub_webhook_outbox_lag_seconds",
    "payhub_resolver_last_pass_age_seconds",
    "payhub_resolver_passes_total",
    "payhub_oldest_processing_payment_age_seconds",
    "payhub_audit_unsealed_events",
    "payhub_audit_seal_lag_seconds",
)


def test_prometheus_has_the_gateway_series(stack: Stack) -> None:
    base = stack.prometheus
    assert scalar(base, 'up{job="payhub"}') == 1.0
    missing = []
    for selector in EXPECTED_SERIES:
        body = api(base, "/api/v1/series", **{"match[]": selector})
        assert body["status"] == "success", body
        if not body["data"]:
            missing.append(selector)
    assert missing == [], f"series not in Prometheus: {missing}"


def test_the_counters_match_the_traffic(stack: Stack) -> None:
    base = stack.prometheus
    # Warm-up (2 payments) plus the driven ones; the declined card is the one failed payment.
    succeeded = 'sum(payhub_payments_total{method="card",status="succeeded",connector="iso8583_card"})'
    assert scalar(base, succeeded) == 1 + stack.traffic.ok
    assert scalar(base, 'sum(payhub_payments_total{method="card",status="failed"})') == 1
    assert scalar(base, "sum(payhub_tls_handshake_failures_total)") >= 1
    # Nothing is stuck and sealing keeps up on an idle sandbox.
    assert scalar(base, "max(payhub_oldest_processing_payment_age_seconds)") < 60
    assert scalar(base, "max(payhub_audit_seal_lag_seconds)") < 60


# ---- alert rules --------------------------------------------------------------------------------


def alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"] if "alert" in rule}


def test_every_alert_rule_loads_and_evaluates_cleanly(stack: Stack) -> None:
    base = stack.prometheus
    expected = alert_exprs()

    def evaluated() -> list[dict[str, Any]]:
        body = api(base, "/api/v1/rules")
        assert body["status"] == "success", body
        rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == set(expected)
        return rules if all(rule["health"] != "unknown" for rule in rules) else []

    rules = eventually(evaluated, "every rule to be evaluated once")
    for rule in rules:
        assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))
        assert rule["type"] == "alerting"
        # A healthy sandbox under light traffic raises nothing (every alert waits 2 min or more before
        # firing; latency may look pending on a machine busy with other work).
        allowed = {"inactive", "pending"} if rule["name"] == "PayhubHighLatencyP99" else {"inactive"}
        assert rule["state"] in allowed, (rule["name"], rule["alerts"])
    groups = api(base, "/api/v1/rules")["data"]["groups"]
    assert {group["name"] for group in groups} == {"payhub-api", "payhub-payments", "payhub-webhooks"}


def test_the_error_rate_expression_computes_what_the_traffic_says(stack: Stack) -> None:
    """PayhubHighErrorRate's expression, run as written: no 5xx, so it returns nothing. The same
    arithmetic over 4xx gives the share of bad requests driven after the warm-up."""
    base = stack.prometheus
    expr = alert_exprs()["PayhubHighErrorRate"]
    assert query(base, expr) == []
    ratio, threshold = expr.rsplit(">", 1)
    assert float(threshold) == 0.02
    assert scalar(base, f"({ratio}) or vector(0)") == 0.0  # 0/n: no 5xx at all
    at = last_scrape(base) + 0.1
    window = f"[{round((at - stack.traffic.since) * 1000)}ms]"
    four_xx = ratio.replace('status=~"5.."', 'status=~"4.."').replace("[5m]", window)
    assert four_xx.count(window) == 2
    expected = stack.traffic.bad / (stack.traffic.bad + stack.traffic.ok)
    assert scalar(base, four_xx, time=str(at)) == pytest.approx(expected, rel=1e-9)
    # With the threshold under that share, the alert's comparison keeps it: it would fire.
    assert scalar(base, f"{four_xx} > {expected / 2}", time=str(at)) == pytest.approx(expected, rel=1e-9)
    assert query(base, f"{four_xx} > {expected * 2}", time=str(at)) == []


# ---- Grafana dashboard --------------------------------------------------------------------------

# What Grafana substitutes before it sends a query (the ones the dashboard uses).
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${__rate_interval}": "1m",
    "${__interval}": "15s",
    "$instance": ".*",  # the dashboard's instance variable, set to All
}


def panel_targets() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return [
        (panel["title"], target["expr"])
        for panel in panels
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def grafana_to_promql(expr: str) -> str:
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda item: -len(item[0])):
        expr = expr.replace(variable, value)
    leftover = re.findall(r"\$\{?\w+", expr)
    assert leftover == [], f"unsubstituted Grafana variables {leftover} in {expr}"
    return expr


# Panels that must show data after the traffic the module drove (others may be empty: no 429s here).
PANELS_WITH_DATA = (
    "Requests by route",
    "Latency p99 by route",
    "Payments by method and status",
    "Connector latency p99",
    "Circuit state",
    "Risk decisions",
    "Webhook outbox lag",
    "DB pool",
    "TLS handshake failures",
    "Oldest processing payment",
    "Audit sealing lag",
)


def test_every_dashboard_query_runs_in_prometheus(stack: Stack) -> None:
    base = stack.prometheus
    targets = panel_targets()
    assert len(targets) >= 10
    errors, with_data = [], set()
    for title, expr in targets:
        body = api(base, "/api/v1/query", query=grafana_to_promql(expr))
        if body["status"] != "success":
            errors.append((title, expr, body.get("error")))
        elif body["data"]["result"]:
            with_data.add(title)
    assert errors == []
    titles = {title for title, _ in targets}
    assert set(PANELS_WITH_DATA) <= titles, set(PANELS_WITH_DATA) - titles
    assert set(PANELS_WITH_DATA) - with_data == set(), "panels without data after the traffic"


def test_the_dashboard_is_a_grafana_model_on_a_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
