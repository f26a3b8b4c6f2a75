"""``make bench``: payhub's card payment against two reference servers, open loop (docs/performance.md).

Starts PostgreSQL (embedded, or ``PAYHUB_DATABASE_URL``'s server) with a fresh ``payhub_bench``
database, ``payhub sandbox``, the gateway (config/bench.toml, ``--workers``), reference A (one
INSERT), reference B (the minimal durable payment) and B's acquirer stub, each its own process;
pins the server under test to CPU 1 and the load generator to CPU 0. Then:

1. saturation of each server: closed loop, 32 clients, card payments;
2. open loop at 25/50/75 % of the *gateway's* saturation rate, against the gateway, A and B alike
   (latency from the intended send time, HdrHistogram);
3. the other scenarios (balance, bill, mix) against the gateway, closed loop;
4. with ``--scale N``: N payments preloaded first (load/growth.py), then card payments and history
   reads at one open-loop rate, and the relation sizes.

CPU seconds of the server, PostgreSQL, the simulators and the load generator are sampled around every
run. Prints one table and the targets, and writes ``load/results/<UTC time>.json`` (every figure)
and ``.png`` (latency against throughput); ``--profile`` adds a py-spy flame graph of the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from load import cpu
from load.cpu import Group
from load.openloop import START_DELAY, GeneratorPool, Job, RunResult
from load.payments_loop import ssl_context
from load.scenarios import setup as scenario_setup
from load.webhook_receiver import WebhookReceiver

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "load" / "results"
BENCH_DATABASE = "payhub_bench"
GATEWAY_PORT, OPS_PORT = 8443, 9108
SANDBOX_PORTS = list(range(9701, 9709))  # acquirer … books (config/bench.toml [sandbox])
FRACTIONS = (0.25, 0.50, 0.75)
OTHER_SCENARIOS = ("balance", "bill", "mix")

# Targets (issue #13): ratios of saturation throughput, p99 at half load, CPU per card payment.
TARGET_VS_B = 0.50
TARGET_VS_A = 0.35
TARGET_P99_VS_B = 2.0
TARGET_GATEWAY_CPU_MS = 0.55
TARGET_POSTGRES_CPU_MS = 0.50


@dataclass(frozen=True)
class Durations:
    saturation: float
    saturation_warmup: float
    rate: float
    rate_warmup: float
    scenario: float
    settle: float  # at most this long between runs for the servers to go idle


FULL = Durations(
    saturation=10.0, saturation_warmup=2.0, rate=15.0, rate_warmup=2.0, scenario=10.0, settle=10.0
)
QUICK = Durations(saturation=2.0, saturation_warmup=0.5, rate=2.0, rate_warmup=0.3, scenario=2.0, settle=1.0)
SETTLE_STEP = 0.2
IDLE_SERVER = 0.10  # cores: a server below this is idle (its timers and background loops)
IDLE_POSTGRES = 0.20


# ---- processes ---------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float = field(default_factory=time.monotonic)
    ready_after: float = 0.0  # seconds from the start until it answered

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start(
    name: str, module_args: list[str], *, cores: frozenset[int] | None, env: dict[str, str], logs: Path
) -> Child:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            cpu.pinned(module_args, cores), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Child(name, process, log)


def stop(children: Sequence[Child]) -> None:
    """SIGTERM to every child (the gateway's parent forwards it to its workers), then SIGKILL stragglers."""
    for child in children:
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait(timeout=5)


def refuse_busy_ports(ports: list[int]) -> None:
    """Measuring someone else's server would print nonsense: stop early instead."""
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is already in use: stop the other payhub first")


async def sleep_until(moment: float) -> None:
    if (delay := moment - time.monotonic()) > 0:
        await asyncio.sleep(delay)


async def _tcp_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def wait_ready(child: Child, check: Any, deadline: float = 90.0) -> None:
    """Poll ``check()`` until it is true; fail early, with the log's tail, if the child died."""
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if child.process.poll() is not None:
            raise SystemExit(f"{child.name} exited ({child.process.returncode}):\n{child.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            if await check():
                child.ready_after = time.monotonic() - child.started
                return
        await asyncio.sleep(0.05)
    raise SystemExit(f"{child.name} did not come up in {deadline:.0f} s:\n{child.tail()}")


# ---- the database ------------------------------------------------------------------------------


async def fresh_database(env: dict[str, str]) -> tuple[str, str]:
    """(admin URL, URL of a new, empty ``payhub_bench``): the embedded server's or PAYHUB_DATABASE_URL's."""
    from config.settings import load_settings
    from gateway.store.db import resolve_database_url
    from gateway.store.embedded import with_database

    url = await resolve_database_url(load_settings(env=env))
    admin = with_database(url, "postgres")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DATABASE}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
    finally:
        await conn.close()
    return admin, with_database(url, BENCH_DATABASE)


async def migrate_and_find_postmaster(url: str) -> cpu.Group:
    from gateway.store.migrate import migrate

    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        # While the connection is open: its backend exits with it.
        postmaster = cpu.postmaster_of(int(await conn.fetchval("SELECT pg_backend_pid()")))
    finally:
        await conn.close()
    if postmaster is None:
        print(
            "bench: PostgreSQL's postmaster is not visible in /proc (another host or container?): "
            "the pg column counts every postgres process of this machine",
            file=sys.stderr,
        )
        return cpu.Group("postgres", every_postgres=True)
    return cpu.Group("postgres", [postmaster])


async def analyze(url: str) -> None:
    """Statistics for the planner: the machine's PostgreSQL may run with autovacuum off."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


# ---- measured runs -----------------------------------------------------------------------------


@dataclass
class Server:
    name: str  # gateway, A, B
    base: str
    child: Child
    sim: str | None  # the CPU group of its counterpart: sandbox (gateway), stub (B)


@dataclass
class Measured:
    server: str
    scenario: str
    label: str  # "saturation", "25%", …, "growth", "profiled"
    result: RunResult
    cpu_seconds: dict[str, float]
    settled: float = 0.0  # seconds waited before the run for the previous one's work to end

    def cpu_ms(self, group: str | None) -> float | None:
        """CPU milliseconds per operation of the measured window."""
        if group is None or group not in self.cpu_seconds or not self.result.completed:
            return None
        return self.cpu_seconds[group] * 1000 / self.result.completed

    def as_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "scenario": self.scenario,
            "label": self.label,
            **self.result.summary(),
            "settled_seconds": self.settled,
            "cpu_seconds": self.cpu_seconds,
            "cpu_ms_per_operation": {group: self.cpu_ms(group) for group in self.cpu_seconds},
        }


@dataclass
class Bench:
    args: argparse.Namespace
    durations: Durations
    pool: GeneratorPool
    groups: dict[str, cpu.Group]
    home: Path
    runs: list[Measured] = field(default_factory=list)
    # The UTC start time, naming every file of the run: load/results/<stamp>.json, .png, -flame-gateway.svg
    stamp: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))

    async def settle(self, server: Group) -> float:
        """Wait (at most ``durations.settle``) until the server and PostgreSQL are about idle, so that
        work left over from the previous run (outbox, audit sealing, checkpoints) is not billed to
        the next one. Returns the seconds waited."""
        started = time.monotonic()
        groups = [server, self.groups["postgres"]]
        before = cpu.sample(groups)
        while time.monotonic() - started < self.durations.settle:
            await asyncio.sleep(SETTLE_STEP)
            after = cpu.sample(groups)
            used = cpu.spent(before, after)
            if used["server"] < IDLE_SERVER * SETTLE_STEP and used["postgres"] < IDLE_POSTGRES * SETTLE_STEP:
                break
            before = after
        return time.monotonic() - started

    async def measure(self, server: Server, scenario: str, label: str, job: Job) -> Measured:
        if server.child.process.poll() is not None:
            raise SystemExit(
                f"{server.name} exited ({server.child.process.returncode}):\n{server.child.tail()}"
            )
        mine = cpu.Group("server", [server.child.pid])
        settled = await self.settle(mine)
        groups = [mine, *self.groups.values()]
        # CPU is sampled at the edges of the measured window: warm-up and drain are not billed.
        job = replace(job, start_at=time.monotonic() + START_DELAY)
        running = asyncio.create_task(self.pool.run(job))
        await sleep_until(job.start_at + job.warmup)
        before = cpu.sample(groups)
        await sleep_until(job.start_at + job.warmup + job.duration)
        after = cpu.sample(groups)
        result = await running
        measured = Measured(server.name, scenario, label, result, cpu.spent(before, after), settled)
        self.runs.append(measured)
        print(f"  {server.name:<8} {label:<10} {result.line()}", file=sys.stderr, flush=True)
        return measured

    def job(self, server: Server, scenario: str, **kwargs: Any) -> Job:
        return Job(base=server.base, scenario=scenario, home=str(self.home), **kwargs)

    async def saturation(
        self, server: Server, scenario: str = "card", setup: dict[str, str] | None = None
    ) -> Measured:
        d = self.durations
        seconds = d.saturation if scenario == "card" else d.scenario
        job = self.job(
            server,
            scenario,
            mode="closed",
            concurrency=self.args.concurrency,
            duration=seconds,
            warmup=d.saturation_warmup,
            setup=setup or {},
        )
        return await self.measure(server, scenario, "saturation", job)

    async def open(self, server: Server, scenario: str, rate: float, label: str) -> Measured:
        d = self.durations
        job = self.job(server, scenario, mode="open", rate=rate, duration=d.rate, warmup=d.rate_warmup)
        return await self.measure(server, scenario, label, job)

    def find(self, server: str, scenario: str, label: str) -> Measured | None:
        return next(
            (m for m in self.runs if (m.server, m.scenario, m.label) == (server, scenario, label)), None
        )


# ---- the table ---------------------------------------------------------------------------------


def ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def opt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table_rows(bench: Bench, servers: dict[str, Server]) -> list[dict[str, Any]]:
    """One row per server and scenario that has a saturation run, every figure as a number."""
    a = bench.find("A", "card", "saturation")
    b = bench.find("B", "card", "saturation")
    rows = []
    for sat in [m for m in bench.runs if m.label == "saturation"]:
        labels = {"saturation", *(f"{fraction:.0%}" for fraction in FRACTIONS)}
        same = [
            m
            for m in bench.runs
            if (m.server, m.scenario) == (sat.server, sat.scenario) and m.label in labels
        ]
        opened = {
            f"{fraction:.0%}": bench.find(sat.server, sat.scenario, f"{fraction:.0%}")
            for fraction in FRACTIONS
        }
        server = servers[sat.server]
        rows.append(
            {
                "server": sat.server,
                "scenario": sat.scenario,
                "saturation": sat.result.throughput,
                "vs_A": sat.result.throughput / a.result.throughput if a and a.result.throughput else None,
                "vs_B": sat.result.throughput / b.result.throughput if b and b.result.throughput else None,
                "open_loop": {
                    label: (
                        {
                            "rate": m.result.target_rate,
                            "throughput": m.result.throughput,
                            **m.result.percentiles(),
                        }
                        if m
                        else None
                    )
                    for label, m in opened.items()
                },
                "operations": sum(m.result.completed for m in same),
                "errors": sum(m.result.errors for m in same),
                "late_sends": sum(m.result.late for m in same if m.result.mode == "open"),
                "cpu_ms": {
                    "server": sat.cpu_ms("server"),
                    "postgres": sat.cpu_ms("postgres"),
                    "sim": sat.cpu_ms(server.sim),
                    "generator": sat.cpu_ms("generator"),
                },
            }
        )
    return rows


def render_table(rows: list[dict[str, Any]], rates: list[float], concurrency: int) -> str:
    rate_heads = [f"{fraction:.0%} = {rate:.0f}/s" for fraction, rate in zip(FRACTIONS, rates, strict=True)]
    head1 = (
        f"{'':<16} {'saturation':^21} │ {'open loop, p50 / p99 / p99.9 ms at':^62} │ "
        f"{'':>6} {'':>5} │ {'CPU ms per operation at saturation':^34}"
    )
    head2 = (
        f"{'server scenario':<16} {'ops/s':>7} {'xA':>6} {'xB':>6} │ "
        + " ".join(f"{head:^20}" for head in rate_heads)
        + f" │ {'errors':>6} {'late':>5} │ {'server':>7} {'pg':>6} {'sim':>6} {'loadgen':>8}"
    )
    lines = [head1, head2, "─" * len(head2)]
    for row in rows:
        cells = []
        for fraction in FRACTIONS:
            point = row["open_loop"][f"{fraction:.0%}"]
            cells.append(
                f"{ms(point['p50']) + ' / ' + ms(point['p99']) + ' / ' + ms(point['p99.9']):^20}"
                if point
                else f"{'-':^20}"
            )
        cpu_ms = row["cpu_ms"]
        lines.append(
            f"{row['server'] + ' ' + row['scenario']:<16} {row['saturation']:>7.0f} {opt(row['vs_A']):>6} "
            f"{opt(row['vs_B']):>6} │ "
            + " ".join(cells)
            + f" │ {row['errors']:>6} {row['late_sends']:>5} │ {opt(cpu_ms['server']):>7} "
            f"{opt(cpu_ms['postgres']):>6} {opt(cpu_ms['sim']):>6} {opt(cpu_ms['generator']):>8}"
        )
    lines.append(
        f"saturation: closed loop, {concurrency} clients; xA, xB: to the reference's card saturation; "
        "open loop: latency from the intended send time"
    )
    lines.append(
        "errors: non-2xx or failed operations in the row's runs; late: open-loop sends >5 ms behind "
        "schedule; sim: sandbox (gateway) or acquirer stub (B)"
    )
    return "\n".join(lines)


def targets(bench: Bench) -> list[dict[str, Any]]:
    gateway = bench.find("gateway", "card", "saturation")
    a = bench.find("A", "card", "saturation")
    b = bench.find("B", "card", "saturation")
    half_gateway = bench.find("gateway", "card", "50%")
    half_b = bench.find("B", "card", "50%")
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float | None, above: bool, text: str) -> None:
        passed = None if value is None or limit is None else value >= limit if above else value <= limit
        checks.append({"target": name, "value": value, "limit": limit, "pass": passed, "text": text})

    if gateway and b:
        ratio = gateway.result.throughput / b.result.throughput if b.result.throughput else None
        check("throughput vs B", ratio, TARGET_VS_B, True, f"≥{TARGET_VS_B:.2f}x B: {opt(ratio)}")
    if gateway and a:
        ratio = gateway.result.throughput / a.result.throughput if a.result.throughput else None
        check("throughput vs A", ratio, TARGET_VS_A, True, f"≥{TARGET_VS_A:.2f}x A: {opt(ratio)}")
    if half_gateway and half_b:
        mine, theirs = half_gateway.result.percentiles()["p99"], half_b.result.percentiles()["p99"]
        check(
            "p99 at 50% vs B",
            mine,
            TARGET_P99_VS_B * theirs,
            False,
            f"p99 at 50% ≤ {TARGET_P99_VS_B:g}x B's: {ms(mine)} vs {ms(TARGET_P99_VS_B * theirs)} ms",
        )
    if gateway:
        server, postgres = gateway.cpu_ms("server"), gateway.cpu_ms("postgres")
        check(
            "gateway CPU per payment",
            server,
            TARGET_GATEWAY_CPU_MS,
            False,
            f"gateway CPU ≤{TARGET_GATEWAY_CPU_MS} ms/payment: {opt(server)}",
        )
        check(
            "PostgreSQL CPU per payment",
            postgres,
            TARGET_POSTGRES_CPU_MS,
            False,
            f"PostgreSQL ≤{TARGET_POSTGRES_CPU_MS} ms/payment: {opt(postgres)}",
        )
    return checks


def targets_line(checks: list[dict[str, Any]]) -> str:
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    return "targets: " + " · ".join(f"{c['text']} {verdict[c['pass']]}" for c in checks)


# ---- --webhooks: a receiver subscribed to every event while the card load runs ------------------

LAG_SAMPLES: list[float] = []
BENCH_ENDPOINT = "make bench receiver"
LEFT_BY_A_RUN = re.compile(r"http://127\.0\.0\.1:[0-9]+/payhub")
API = f"https://localhost:{GATEWAY_PORT}/v1/webhook_endpoints"
METRICS = f"http://127.0.0.1:{OPS_PORT}/metrics"


async def subscribe(ctx: object) -> WebhookReceiver:
    """A local receiver (load/webhook_receiver.py) subscribed to every acme event type. Endpoints an
    earlier run left (its receiver is gone) are deleted first: retries to them would be measured too."""
    receiver = WebhookReceiver().start()
    body = {"url": receiver.url, "enabled_events": ["*"], "description": BENCH_ENDPOINT}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:  # type: ignore[arg-type]
        async with session.get(API, params={"limit": "100"}) as resp:
            for endpoint in (await resp.json())["data"]:
                if endpoint.get("description") == BENCH_ENDPOINT or LEFT_BY_A_RUN.fullmatch(endpoint["url"]):
                    async with session.delete(f"{API}/{endpoint['id']}") as gone:
                        await gone.read()
        async with session.post(API, json=body) as resp:
            created = await resp.json()
            if resp.status != 200:
                raise SystemExit(f"cannot subscribe the receiver: {created}")
    receiver.secret = created["secret"]
    return receiver


async def outbox_lag(session: aiohttp.ClientSession) -> float:
    async with session.get(METRICS) as resp:
        text = await resp.text()
    for row in text.splitlines():
        if row.startswith("payhub_webhook_outbox_lag_seconds"):
            return float(row.split()[-1])
    return 0.0


async def sample_lag() -> None:
    """The gateway's own outbox lag gauge (age of the oldest due delivery), every half second."""
    async with aiohttp.ClientSession() as session:
        while True:
            LAG_SAMPLES.append(await outbox_lag(session))
            await asyncio.sleep(0.5)


async def drain(deadline: float = 120.0) -> float:
    """Seconds after the load until the outbox is empty (lag 0 twice in a row)."""
    started = time.monotonic()
    zeros = 0
    async with aiohttp.ClientSession() as session:
        while zeros < 2 and time.monotonic() - started < deadline:
            zeros = zeros + 1 if await outbox_lag(session) == 0 else 0
            await asyncio.sleep(0.25)
    return time.monotonic() - started


def webhook_line(
    receiver: WebhookReceiver, started: float, ended: float, drained: float, lag: list[float]
) -> str:
    receipts = receiver.receipts()
    during = sum(1 for r in receipts if started <= r.at <= ended)
    ok = sum(1 for r in receipts if r.answered == 200)
    bad = sum(1 for r in receipts if not r.signed)
    lag_sorted = sorted(lag) or [0.0]
    return (
        f"webhooks   {ok} delivered ({bad} badly signed), "
        f"{during / (ended - started):.0f}/s during the load; "
        f"outbox drained {drained:.1f} s after it; outbox lag max {lag_sorted[-1]:.1f} s, "
        f"median {lag_sorted[len(lag_sorted) // 2]:.1f} s ({len(lag)} samples)"
    )


# ---- the run -----------------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


@contextlib.contextmanager
def children_stopped(children: list[Child]) -> Iterator[None]:
    try:
        yield
    finally:
        stop(children)


async def first_payment(server: Server, ctx: object) -> None:
    """One card payment before measuring: a server that cannot pay fails here, with its log."""
    from load.scenarios import card

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:  # type: ignore[arg-type]
        error = await card(session, server.base, 0, {})
    if error is not None:
        raise SystemExit(f"{server.name} refused a card payment ({error}):\n{server.child.tail()}")


@dataclass
class Setup:
    """What the runs need from the set-up."""

    home: Path
    url: str  # the payhub_bench database
    postgres: cpu.Group
    plan: cpu.CorePlan
    children: dict[str, Child]
    sizes_before: list[tuple[str, int, int]]
    wall: float  # time.monotonic() at the start


async def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    wall = time.monotonic()
    refuse_busy_ports([GATEWAY_PORT, OPS_PORT, *SANDBOX_PORTS, args.a_port, args.b_port, args.stub_port])
    env = {**os.environ, "PAYHUB_CONFIG": str(REPO / "config" / "bench.toml"), "PAYHUB_HOME": str(home)}
    logs = home / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)

    from config.settings import load_settings
    from crypto.pki import PkiPaths, init_pki

    settings = load_settings(env=env)
    init_pki(PkiPaths(settings.pki_dir), {tenant: t.role for tenant, t in settings.tenants.items()})
    plan = cpu.plan_cores(len(cpu.ALL_CORES), args.workers)

    children: list[Child] = []

    def launch(name: str, module_args: list[str], cores: frozenset[int] | None) -> Child:
        child = start(name, module_args, cores=cores, env=env, logs=logs)
        children.append(child)
        return child

    with children_stopped(children):
        # What needs no database starts first; PostgreSQL, the sandbox and the stub float over every core.
        sandbox = launch("sandbox", ["gateway", "sandbox"], cpu.ALL_CORES)
        stub_args = ["load.reference", "--acquirer", "--port", str(args.stub_port)]
        stub = launch("acquirer-stub", stub_args, cpu.ALL_CORES)
        pool = GeneratorPool(args.generators, plan.generator)
        try:
            _, url = await fresh_database(env)
            postgres = await migrate_and_find_postmaster(url)
            env["PAYHUB_DATABASE_URL"] = url
            sizes_before: list[tuple[str, int, int]] = []
            if args.scale:
                from load import growth

                started = time.monotonic()
                await growth.preload(url, args.scale)
                print(
                    f"preloaded {args.scale:,} payments in {time.monotonic() - started:.1f} s",
                    file=sys.stderr,
                )
                sizes_before = await growth.sizes(url)
            b_args = ["--kind", "b", "--port", str(args.b_port), "--acquirer-port", str(args.stub_port)]
            named = {
                "sandbox": sandbox,
                "stub": stub,
                "gateway": launch(
                    "gateway", ["gateway", "serve", "--workers", str(args.workers)], plan.server
                ),
                "A": launch(
                    "reference-a", ["load.reference", "--kind", "a", "--port", str(args.a_port)], plan.server
                ),
                "B": launch("reference-b", ["load.reference", *b_args], plan.server),
            }
            ready = Setup(home, url, postgres, plan, named, sizes_before, wall)
            return await measure_all(args, pool, ready)
        finally:
            pool.close()


async def bring_up(args: argparse.Namespace, setup: Setup, ctx: ssl.SSLContext) -> dict[str, Server]:
    """Wait until every child answers, then one card payment through each server."""
    children = setup.children

    async def https_up(port: int) -> bool:
        connector = aiohttp.TCPConnector(ssl=ctx)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"https://localhost:{port}/") as resp,
        ):
            return resp.status < 500

    async def gateway_ready() -> bool:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{OPS_PORT}/readyz") as resp,
        ):
            return resp.status == 200

    async def sandbox_up() -> bool:
        return all([await _tcp_open(9701), await _tcp_open(9702), await _tcp_open(9708)])

    async def stub_up() -> bool:
        return await _tcp_open(args.stub_port)

    await asyncio.gather(
        wait_ready(children["sandbox"], sandbox_up),
        wait_ready(children["stub"], stub_up),
        wait_ready(children["gateway"], gateway_ready),
        wait_ready(children["A"], lambda: https_up(args.a_port)),
        wait_ready(children["B"], lambda: https_up(args.b_port)),
    )
    servers = {
        "gateway": Server("gateway", f"https://localhost:{GATEWAY_PORT}", children["gateway"], "sandbox"),
        "A": Server("A", f"https://localhost:{args.a_port}", children["A"], None),
        "B": Server("B", f"https://localhost:{args.b_port}", children["B"], "stub"),
    }
    started = time.monotonic()
    for server in servers.values():
        await first_payment(server, ctx)
    print(
        "up after "
        + ", ".join(f"{child.name} {child.ready_after:.1f} s" for child in children.values())
        + f"; first payments {time.monotonic() - started:.1f} s",
        file=sys.stderr,
    )
    return servers


async def saturate_gateway(bench: Bench, gateway: Server, ctx: ssl.SSLContext) -> tuple[Measured, str | None]:
    """The gateway's card saturation; with --webhooks, a receiver subscribed to every event meanwhile."""
    receiver = await subscribe(ctx) if bench.args.webhooks else None
    sampler = asyncio.create_task(sample_lag()) if receiver else None
    started = time.time()
    sat = await bench.saturation(gateway)
    ended = time.time()
    if receiver is None or sampler is None:
        return sat, None
    drained = await drain()
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    receiver.stop()
    return sat, webhook_line(receiver, started, ended, drained, LAG_SAMPLES)


async def growth_runs(bench: Bench, gateway: Server, url: str, rate: float) -> tuple[list[str], list[Any]]:
    """--scale: card payments and history reads at one open-loop rate, then the relation sizes."""
    from load import growth

    lines = []
    for scenario in ("card", "history"):
        measured = await bench.open(gateway, scenario, rate, "growth")
        pct = measured.result.percentiles()
        lines.append(
            f"growth: {bench.args.scale:,} payments preloaded, {scenario:<7} open loop at {rate:.0f}/s: "
            f"p50 {ms(pct['p50'])} ms, p99 {ms(pct['p99'])} ms, p99.9 {ms(pct['p99.9'])} ms, "
            f"errors {measured.result.errors}, late sends {measured.result.late}"
        )
    sizes = await growth.sizes(url)
    lines.append(growth.size_table(sizes))
    return lines, sizes


async def measure_all(args: argparse.Namespace, pool: GeneratorPool, setup: Setup) -> dict[str, Any]:
    ctx = ssl_context(setup.home, "acme")
    servers = await bring_up(args, setup, ctx)
    await analyze(setup.url)
    if setup.plan.generator is not None:
        os.sched_setaffinity(0, setup.plan.generator)  # the bench itself stays off the server's core
    print(
        f"bench: {setup.plan.note}; gateway --workers {args.workers}; {pool.size} generator process(es); "
        f"ready after {time.monotonic() - setup.wall:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    groups = {
        "postgres": setup.postgres,
        "sandbox": cpu.Group("sandbox", [setup.children["sandbox"].pid]),
        "stub": cpu.Group("stub", [setup.children["stub"].pid]),
        "generator": cpu.Group("generator", pool.pids),
    }
    bench = Bench(args, QUICK if args.quick else FULL, pool, groups, setup.home)
    gateway = servers["gateway"]

    # 1. Saturation: the gateway, then A and B.
    sat, webhooks = await saturate_gateway(bench, gateway, ctx)
    for name in ("A", "B"):
        await bench.saturation(servers[name])

    # 2. Open loop at fractions of the gateway's saturation, every server at the same rates.
    rates = [max(1.0, fraction * sat.result.throughput) for fraction in FRACTIONS]
    for fraction, rate in zip(FRACTIONS, rates, strict=True):
        for server in servers.values():
            await bench.open(server, "card", rate, f"{fraction:.0%}")

    # 3. The other scenarios, gateway only, closed loop.
    for scenario in args.scenarios or (["bill"] if args.quick else list(OTHER_SCENARIOS)):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            prepared = await scenario_setup(scenario, session, gateway.base)
        await bench.saturation(gateway, scenario, prepared)

    # 4. Growth: card payments and history reads at one open-loop rate over the preloaded history.
    growth_rate = args.scale_rate or rates[1]
    growth_lines, sizes_after = (
        await growth_runs(bench, gateway, setup.url, growth_rate) if args.scale else ([], [])
    )

    # 5. --profile: the 50 % card run again, with py-spy attached (kept out of the table).
    flame = await profile(bench, gateway, rates[1], args.workers) if args.profile else None

    extra = {
        "webhooks": webhooks,
        "growth": {
            "rows": args.scale,
            "rate": growth_rate if args.scale else None,
            "sizes_before": setup.sizes_before,
            "sizes_after": sizes_after,
        },
        "flame_graph": str(flame) if flame else None,
    }
    report = write_report(bench, servers, rates, setup, extra)
    if webhooks:
        print(webhooks)
    for line in growth_lines:
        print(line)
    if flame:
        print(f"flame graph: {flame.relative_to(REPO)}")
    return report


def write_report(
    bench: Bench, servers: dict[str, Server], rates: list[float], setup: Setup, extra: dict[str, Any]
) -> dict[str, Any]:
    """Print the table and the targets; write the JSON and the PNG."""
    args = bench.args
    nproc = os.cpu_count() or 1
    stamp = bench.stamp
    rows = table_rows(bench, servers)
    checks = targets(bench)
    report: dict[str, Any] = {
        "timestamp": stamp,
        "nproc": nproc,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "git": git_state(),
        "args": vars(args),
        "durations": bench.durations.__dict__,
        "pinning": setup.plan.note,
        "postgres_processes": (
            "every postgres process of the machine"
            if setup.postgres.every_postgres
            else f"postmaster {setup.postgres.roots[0]} and its children"
        ),
        "generators": bench.pool.size,
        "database": "PAYHUB_DATABASE_URL" if os.environ.get("PAYHUB_DATABASE_URL") else "embedded",
        "rates": dict(zip((f"{f:.0%}" for f in FRACTIONS), rates, strict=True)),
        "table": rows,
        "targets": checks,
        "runs": [m.as_json() for m in bench.runs],
        **extra,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / f"{stamp}.json"
    png_path = RESULTS / f"{stamp}.png"
    from load.plot import plot

    series = {
        name: [
            (m.result.throughput, m.result.percentiles()["p50"], m.result.percentiles()["p99"])
            for m in bench.runs
            if m.server == name and m.scenario == "card" and m.label.endswith("%")
        ]
        for name in servers
    }
    saturations = {
        name: m.result.throughput
        for name in servers
        if (m := bench.find(name, "card", "saturation")) is not None
    }
    plot(series, saturations, png_path, title=f"make bench {stamp} ({nproc} cores, {args.workers} worker(s))")
    report["wall_seconds"] = time.monotonic() - setup.wall
    json_path.write_text(json.dumps(report, indent=2, default=str))

    print(f"make bench{' --quick' if args.quick else ''} {stamp}: nproc {nproc}, {setup.plan.note}")
    print(render_table(rows, rates, args.concurrency))
    print(targets_line(checks))
    print(f"results: {json_path.relative_to(REPO)}, {png_path.relative_to(REPO)}")
    return report


async def profile(bench: Bench, gateway: Server, rate: float, workers: int) -> Path | None:
    """py-spy on the gateway (every worker with --subprocesses) during an open-loop card run at ``rate``."""
    d = bench.durations
    seconds = math.ceil(d.rate + d.rate_warmup + 0.5)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{bench.stamp}-flame-gateway.svg"
    spy = Path(sys.executable).with_name("py-spy")
    command = [
        str(spy) if spy.exists() else "py-spy",
        "record",
        "--rate",
        "200",
        "--format",
        "flamegraph",
        "-o",
        str(out),
        "--pid",
        str(gateway.child.pid),
        "--duration",
        str(seconds),
    ]
    if workers > 1:
        command.append("--subprocesses")
    log = bench.home / "bench-logs" / "py-spy.log"
    try:
        recorder = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except OSError as exc:
        print(f"--profile: cannot run py-spy ({exc})", file=sys.stderr)
        return None
    await asyncio.sleep(0.5)  # py-spy attaches before the load starts
    job = bench.job(gateway, "card", mode="open", rate=rate, duration=d.rate, warmup=d.rate_warmup)
    await bench.measure(gateway, "card", "profiled", job)
    try:
        output, _ = await asyncio.wait_for(recorder.communicate(), seconds + 30)
    except TimeoutError:
        recorder.kill()
        output = b""
    log.write_bytes(output)
    if recorder.returncode != 0 or not out.exists():
        print(f"--profile: py-spy failed, see {log}", file=sys.stderr)
        return None
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="short runs (under a minute in all), card + bill"
    )
    parser.add_argument("--workers", type=int, default=1, help="payhub serve --workers")
    parser.add_argument(
        "--scale", type=int, default=0, help="preload this many payments first (load/growth.py)"
    )
    parser.add_argument(
        "--scale-rate", type=float, default=0.0, help="--scale: open-loop rate (default 50%% of saturation)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients at saturation")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument(
        "--scenarios",
        type=lambda text: [s for s in text.split(",") if s],
        default=None,
        help=f"other gateway scenarios, comma-separated (default {','.join(OTHER_SCENARIOS)}; --quick: bill)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy flame graph of the gateway at 50%%")
    parser.add_argument("--webhooks", action="store_true", help="a receiver subscribed to every event")
    parser.add_argument("--a-port", type=int, default=8444)
    parser.add_argument("--b-port", type=int, default=8445)
    parser.add_argument("--stub-port", type=int, default=9720)
    args = parser.parse_args(argv)
    for scenario in args.scenarios or ():
        if scenario not in OTHER_SCENARIOS:
            parser.error(f"--scenarios: {scenario!r} is not one of {', '.join(OTHER_SCENARIOS)}")
    home = Path(os.environ.get("PAYHUB_HOME", REPO / "var")).resolve()
    started = time.monotonic()
    # SIGTERM (a timeout, a CI runner) stops the children too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        asyncio.run(run(args, home))
    except KeyboardInterrupt:
        raise SystemExit("interrupted: every child was stopped") from None
    print(f"wall time {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
