"""The faults of the world outside the gateway (issue #16), how each is started and ended, how long
the hub takes to recover from one, and the figures per fault class.

A fault application (``Actions.apply_fault``) fires a burst of requests, starts the fault at a moment
during the burst, holds it, ends it, retries every unanswered request with its same key and body, then
measures recovery: the seconds from the fault's end until every payment touched during the fault is
final or waiting on a documented external step. Violations are attributed to a fault class by the
objects they name (:func:`attribute`).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from tests.model import checks
from tests.model.harness import CARD_READ_TIMEOUT, UTILITY_READ_TIMEOUT, Client, Operation, Sandbox, Stack
from tests.support.faultproxy import Fault
from tests.support.pgcluster import Cluster

FAULT_CLASSES = (
    "gateway_kill",
    "postgres_restart",
    "simulator_restart_kept",
    "biller_restart_lost",
    "latency_spike",
    "reset_before_write",
    "reset_after_write",
    "late_callbacks",
)
NONE = "none"  # violations no fault application touched
RESTARTABLE = ("acquirer", "utility", "bank")
# Link sets a fault is drawn over (``pick`` picks one); the latency spike hits the two links whose
# connectors have short read time-outs in the checker's config.
SPIKED = (("acquirer",), ("utility",), ("acquirer", "utility"))
RESET = (("acquirer",), ("utility",), ("bank",), ("acquirer", "utility", "bank"))
SPIKE_OVER_TIMEOUT = 1.5  # s the delay exceeds the link's connector read time-out
UP_DEADLINE = 30.0  # s a restarted simulator may take to listen again
RECOVERY_DEADLINE = 90.0  # s; the resolver's back-off (1, 5, 15, 30 s) rechecks an attempt 4 times by then
NOTIFY_MAX = 6  # settled payments whose callback is sent again per application
FOOTNOTE = (
    "gateway_kill: kill -9 of the gateway with requests in flight; webhook deliveries run in the gateway, "
    "so it also kills the delivery worker mid-delivery. A violation counts in every class whose "
    "applications touched a payment it names (none: touched by no fault). rejected: 4xx answers and "
    "requests answered a documented retry-later 503; 5xx: any other 5xx. p99: first send to final "
    "answer of the requests in flight during the fault. recovery: fault end until every payment it "
    "touched is final or waiting (capped at the deadline)."
)


class Outside(Protocol):
    """What a fault needs of the checker's world (tests.model.actions.World)."""

    stack: Stack
    client: Client
    sandbox: Sandbox
    pool: asyncpg.Pool
    cluster: Cluster
    remembered: checks.Remembered


@dataclass
class Application:
    """One fault applied: what it was, when (wall clock), the burst's requests, what it touched."""

    kind: str
    detail: str
    operations: list[Operation]
    started: float = 0.0
    ended: float = 0.0
    payments: set[str] = field(default_factory=set)  # created or touched during the fault
    recovery: float | None = None  # None: not within RECOVERY_DEADLINE
    failures: list[str] = field(default_factory=list)  # the fault itself could not be applied as asked


@dataclass
class Injector:
    """How one application starts and ends its fault (``prepare`` runs before the burst)."""

    detail: str
    begin: Callable[[], Awaitable[None]]
    end: Callable[[], Awaitable[None]]
    prepare: Callable[[], Awaitable[None]] | None = None


def injector(world: Outside, kind: str, hold: float, pick: int, app: Application, latency: float) -> Injector:
    """The injector of ``kind``, held ``hold`` s, over the link set or simulator ``pick`` picks.
    ``latency`` slows the HTTP simulators during a gateway kill (see ``crash_with``)."""
    stack, sandbox = world.stack, world.sandbox

    async def nothing() -> None:
        return None

    if kind == "gateway_kill":

        async def slow() -> None:
            await sandbox.set_latency(latency)

        async def kill() -> None:
            stack.kill_gateway()

        async def restart() -> None:
            await world.client.reset()
            await sandbox.set_latency(0.0)
            await stack.start_gateway()

        return Injector(f"kill -9 #{stack.kills + 1}, simulator latency {latency} s", kill, restart, slow)
    if kind == "postgres_restart":

        async def stop() -> None:
            await asyncio.to_thread(world.cluster.stop, "immediate")

        async def start() -> None:
            await asyncio.to_thread(world.cluster.start)

        return Injector(f"PostgreSQL stopped (immediate) for {hold} s", stop, start)
    if kind in ("simulator_restart_kept", "biller_restart_lost"):
        forget = kind == "biller_restart_lost"
        service = "utility" if forget else RESTARTABLE[pick % len(RESTARTABLE)]

        async def down() -> None:
            if forget:  # the biller's book is about to be emptied: keep what it lists now
                world.remembered.before_forgetting(await sandbox.books())
            status, text = await sandbox.restart(service, hold, forget=forget)
            if status != 202:
                app.failures.append(f"POST /restart {service} answered {status}: {text[:200]}")

        async def up() -> None:
            started = time.monotonic()
            while time.monotonic() - started < UP_DEADLINE:
                try:
                    if await sandbox.is_up(service):
                        return
                except Exception as exc:  # reported below if it never comes up
                    last = repr(exc)
                else:
                    last = "up: false"
                await asyncio.sleep(0.1)
            app.failures.append(f"{service} not up {UP_DEADLINE} s after its restart ({last})")

        what = "losing its state" if forget else "keeping its state"
        return Injector(f"{service} restarted {what}, down {hold} s", down, up)
    if kind in ("latency_spike", "reset_before_write", "reset_after_write"):
        links = SPIKED[pick % len(SPIKED)] if kind == "latency_spike" else RESET[pick % len(RESET)]
        faults = {service: _link_fault(kind, service) for service in links}

        async def on() -> None:
            for service, fault in faults.items():
                stack.link(service).set(fault)

        async def off() -> None:
            for service in faults:
                stack.link(service).set(None)

        shown = ", ".join(
            f"{s} {f.kind}" + (f" {f.seconds} s" if f.kind == "delay" else "") for s, f in faults.items()
        )
        return Injector(f"{shown} for {hold} s", on, off)
    if kind == "late_callbacks":
        sender = CallbackSender(world, app, random.Random(pick))

        async def send() -> None:
            sender.task = asyncio.ensure_future(sender.run(hold))

        async def finish() -> None:
            await sender.finish()

        return Injector(f"duplicate and late bank / e-wallet callbacks for {hold} s", send, finish)
    raise ValueError(f"unknown fault class {kind}")


def _link_fault(kind: str, service: str) -> Fault:
    """The proxy fault of a link; resets hit open connections too (pooled HTTP connections and the
    persistent ISO 8583 link would otherwise never see them) at their next request."""
    if kind == "latency_spike":
        timeout = CARD_READ_TIMEOUT if service == "acquirer" else UTILITY_READ_TIMEOUT
        return Fault.delay(timeout + SPIKE_OVER_TIMEOUT)
    if kind == "reset_before_write":
        return Fault.reset(open_too=True)
    return Fault.reset_after_request(open_too=True)


class CallbackSender:
    """The bank and the e-wallet send their signed callbacks again, for payments the hub has already
    settled (by a poll or an earlier callback): some twice at once, some late (near the fault's end)."""

    def __init__(self, world: Outside, app: Application, rnd: random.Random) -> None:
        self.world = world
        self.app = app
        self.rnd = rnd
        self.task: asyncio.Future[None] | None = None
        self.sent = 0

    async def _settled(self) -> list[tuple[str, str, str]]:
        """(simulator, reference, payment) of settled bank and e-wallet collections, newest first."""

        async def read(conn: checks.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(
                """SELECT a.id, a.connector, a.payment_id FROM payment_attempts a
                   JOIN payments p ON p.id = a.payment_id
                   WHERE a.operation = 'authorize' AND a.status = 'succeeded'
                     AND a.connector IN ('bank_transfer', 'ewallet') AND p.status <> 'processing'
                   ORDER BY a.updated DESC LIMIT 40"""
            )
            return rows

        rows = await checks.retrying(read, self.world.pool)
        return [
            ("bank" if r["connector"] == "bank_transfer" else "ewallet", r["id"], r["payment_id"])
            for r in rows
        ]

    async def _notify(self, service: str, reference: str, payment: str) -> None:
        body = {"status": "settled"} if service == "bank" else None
        self.app.payments.add(payment)
        self.sent += 1
        try:
            status, text = await self.world.sandbox.notify(service, reference, body)
        except Exception as exc:  # a simulator that cannot be asked: reported
            status, text = 0, repr(exc)
        if status != 200:
            self.app.failures.append(
                f"{service} notify {reference} ({payment}) answered {status}: {text[:160]}"
            )

    async def run(self, hold: float) -> None:
        settled = await self._settled()
        picked = self.rnd.sample(settled, min(NOTIFY_MAX, len(settled)))
        # Twice at once (a duplicate racing itself), then once more later in the hold.
        for service, reference, payment in picked[: len(picked) // 2]:
            await asyncio.gather(*(self._notify(service, reference, payment) for _ in range(2)))
        await asyncio.sleep(hold / 2)
        for service, reference, payment in picked[len(picked) // 2 :]:
            await self._notify(service, reference, payment)
        await asyncio.sleep(hold / 2)

    async def finish(self) -> None:
        if self.task is not None:
            await self.task
        # Late: the burst's own bank and wallet payments the hub settled meanwhile, called back again.
        burst = {p for op in self.app.operations for p in _payments_named(op)}
        for service, reference, payment in await self._settled():
            if payment in burst:
                await self._notify(service, reference, payment)
        if self.sent == 0:
            self.app.failures.append("no settled bank or e-wallet payment to call back")


# ---- what a fault touched, and recovery ----------------------------------------------------------


def _payments_named(op: Operation) -> set[str]:
    """Payments an operation's request or answer names."""
    named = {part for part in op.path.split("/") if part.startswith("pay_")}
    for value in (
        op.field("id"),
        op.field("payment"),
        (op.body or {}).get("payment") if isinstance(op.body, dict) else None,
    ):
        if isinstance(value, str) and value.startswith("pay_"):
            named.add(value)
    return named


async def touched(pool: asyncpg.Pool, app: Application) -> set[str]:
    """Payments created or changed (or whose attempts or refunds changed) during the fault, and
    those the burst's requests name."""

    async def read(conn: checks.Connection) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await conn.fetch(
            """WITH w AS (SELECT to_timestamp($1) AS a, to_timestamp($2) AS b)
               SELECT id FROM payments, w WHERE created BETWEEN a AND b OR updated BETWEEN a AND b
               UNION SELECT payment_id FROM payment_attempts, w WHERE updated BETWEEN a AND b
               UNION SELECT payment_id FROM refunds, w WHERE updated BETWEEN a AND b""",
            app.started,
            app.ended,
        )
        return rows

    found = {r[0] for r in await checks.retrying(read, pool)}
    for op in app.operations:
        found |= _payments_named(op)
    return found


async def recover(pool: asyncpg.Pool, app: Application, since: float) -> None:
    """Wait until every payment ``app`` touched is final or waiting on a documented external step;
    ``app.recovery``: seconds from ``since`` (monotonic, the fault's end), None past the deadline."""
    app.payments |= await touched(pool, app)

    async def unsettled(conn: checks.Connection) -> int:
        count: int = await conn.fetchval(
            """SELECT count(*) FROM payments WHERE id = ANY($1::text[]) AND NOT status = ANY($2::text[])
                 AND NOT (status = 'processing'
                          AND coalesce(bill_posting->>'status', '') = 'manual_review')""",
            sorted(app.payments),
            sorted(checks.FINAL | checks.WAITING),
        )
        return count

    while await checks.retrying(unsettled, pool):
        if time.monotonic() - since > RECOVERY_DEADLINE:
            return
        await asyncio.sleep(0.25)
    app.recovery = time.monotonic() - since


# ---- attribution and figures -------------------------------------------------------------------


def owners(applications: Iterable[Application], hub: checks.Hub) -> dict[str, set[str]]:
    """Object (payment, its attempts and refunds, a burst's ``#n``, ``fault:<class>:<i>``) → the fault
    classes whose applications touched it."""
    owned: dict[str, set[str]] = defaultdict(set)
    for i, app in enumerate(applications):
        owned[f"fault:{app.kind}:{i}"].add(app.kind)
        for pid in app.payments:
            owned[pid].add(app.kind)
        for op in app.operations:
            owned[f"#{op.number}"].add(app.kind)
    for attempt in hub.attempts:
        owned[attempt["id"]] |= owned.get(attempt["payment_id"], set())
    for refund in hub.refunds:
        owned[refund["id"]] |= owned.get(refund["payment_id"], set())
    return owned


def attribute(violation: checks.Violation, owned: dict[str, set[str]]) -> set[str]:
    classes: set[str] = set()
    for o in violation.objects:
        classes |= owned.get(o, set())
    return classes or {NONE}


@dataclass
class ClassFigures:
    applications: int = 0
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    duplicates: int = 0
    created: int = 0
    lost: int = 0
    stuck: int = 0
    five_xx: int = 0
    latencies: list[float] = field(default_factory=list)  # ms
    recoveries: list[float] = field(default_factory=list)  # s (the deadline for one that never recovered)

    @property
    def p99(self) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def failing(self) -> bool:
        return any((self.duplicates, self.created, self.lost, self.stuck, self.five_xx))

    def record(self) -> dict[str, Any]:
        return {
            "applications": self.applications,
            "sent": self.sent,
            "acked": self.acked,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "created": self.created,
            "lost": self.lost,
            "stuck": self.stuck,
            "5xx": self.five_xx,
            "p99_ms": None if self.p99 is None else round(self.p99),
            "recovery_max_s": round(max(self.recoveries), 1) if self.recoveries else None,
            "recovery_median_s": round(statistics.median(self.recoveries), 1) if self.recoveries else None,
        }


def _counts(figures: ClassFigures, ops: Iterable[Operation]) -> None:
    for op in ops:
        figures.sent += 1
        status = op.status
        figures.acked += int(status is not None and 200 <= status < 300)
        figures.rejected += int(
            (status is not None and 400 <= status < 500) or any(t.unavailable for t in op.tries)
        )
        figures.five_xx += sum(1 for t in op.tries if checks.is_5xx(t))


def _in_flight_ms(op: Operation, app: Application) -> float | None:
    """First send to final answer, if the request was in flight during the fault."""
    answer = op.answer
    if not op.tries or answer is None:
        return None
    first = op.tries[0].at - op.tries[0].elapsed
    if first > app.ended or answer.at < app.started:
        return None
    return (answer.at - first) * 1000


def figures(
    applications: list[Application],
    violations: Iterable[checks.Violation],
    owned: dict[str, set[str]],
    all_operations: Iterable[Operation],
) -> dict[str, ClassFigures]:
    table = {kind: ClassFigures() for kind in (*FAULT_CLASSES, NONE)}
    in_bursts: set[int] = set()
    for app in applications:
        row = table[app.kind]
        row.applications += 1
        _counts(row, app.operations)
        in_bursts.update(op.number for op in app.operations)
        row.latencies += [ms for op in app.operations if (ms := _in_flight_ms(op, app)) is not None]
        row.recoveries.append(RECOVERY_DEADLINE if app.recovery is None else app.recovery)
    _counts(table[NONE], (op for op in all_operations if op.number not in in_bursts))
    table[NONE].five_xx = 0  # the 5xx of requests outside any burst are counted from their violations
    for v in violations:
        for kind in attribute(v, owned):
            row = table[kind]
            row.duplicates += v.duplicates
            if v.invariant in (4, 5, 6):
                row.created += v.created
                row.lost += v.lost
            row.stuck += int(v.stuck)
            if kind == NONE and v.invariant == 7:
                row.five_xx += 1
    return table


def table(rows: dict[str, ClassFigures]) -> str:
    header = (
        "fault class", "applications", "sent", "acked", "rejected", "dup", "created", "lost", "stuck",
        "5xx", "p99 ms", "recovery max s", "recovery median s",
    )  # fmt: skip
    lines: list[tuple[str, ...]] = [header]
    for kind, row in rows.items():
        r = row.record()
        lines.append(
            (kind, *(str("-" if r[k] is None else r[k]) for k in list(r)))  # same order as the header
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        " | ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(line))
        for line in lines
    ]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(["per fault class:", *("  " + line for line in text), f"  ({FOOTNOTE})"])


def write_json(path: Path, rows: dict[str, ClassFigures], applications: list[Application]) -> None:
    path.write_text(
        json.dumps(
            {
                "classes": {kind: row.record() for kind, row in rows.items()},
                "applications": [
                    {
                        "kind": a.kind,
                        "detail": a.detail,
                        "started": round(a.started, 3),
                        "ended": round(a.ended, 3),
                        "requests": [op.number for op in a.operations],
                        "payments": sorted(a.payments),
                        "recovery_s": None if a.recovery is None else round(a.recovery, 2),
                        "failures": a.failures,
                    }
                    for a in applications
                ],
                "footnote": FOOTNOTE,
            },
            indent=2,
        )
        + "\n"
    )
