"""Load generator of ``make bench``: open loop at a fixed arrival rate, or closed loop to saturation.

**Open loop.** Operation *i* is due at ``t0 + offset + i / rate`` whatever happened to the ones
before it, and its latency is measured from that *intended* send time, not from when it actually
went out. A server that stalls for 300 ms therefore shows 300 ms of latency on every request that
was due during the stall, as its users would see it, instead of one slow request followed by a
quiet pause of the generator (coordinated omission). A generator that cannot keep up sends late
rather than silently turning into a closed loop, and says so: every measured send that went out
more than ``late_after`` after its intended time is counted in ``late`` (and the largest send lag is
kept). Latencies go into an HdrHistogram (1 µs to 60 s, 3 significant digits).

**Closed loop** (saturation): ``concurrency`` clients each send their next operation as soon as
the previous one answered; the throughput is what the server sustains. Its latencies are those of a
closed loop (coordinated by construction): read its throughput, not its percentiles.

Both keep connections alive (one aiohttp session, a connector limit far above the offered load) and
count as an error any operation with a non-2xx response or an exception, by kind.

One process may not drive a high rate: :class:`GeneratorPool` splits a run over N worker processes
(each ``rate / N``, staggered by ``1 / rate`` so the merged schedule is the even one), pinned to the
generator's cores, and merges their histograms with ``encode()`` / ``decode_and_add()``.

    python -m load.openloop --url https://localhost:8443 --scenario card --rate 200 --seconds 10
    python -m load.openloop --url https://localhost:8443 --closed 32 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiohttp
import orjson
from hdrh.histogram import HdrHistogram  # type: ignore[import-untyped]

from load.payments_loop import ssl_context
from load.scenarios import OPERATIONS, SCENARIOS

LOWEST_US = 1
HIGHEST_US = 60_000_000
DIGITS = 3
START_DELAY = 0.25  # seconds between handing out a job and its t0: the workers unpickle and connect

T = TypeVar("T")


def new_histogram() -> Any:
    return HdrHistogram(LOWEST_US, HIGHEST_US, DIGITS)


def record(histogram: Any, seconds: float) -> None:
    histogram.record_value(min(HIGHEST_US, max(LOWEST_US, round(seconds * 1e6))))


def count_at_or_above(histogram: Any, seconds: float) -> int:
    """How many recorded latencies are at least ``seconds`` (to the histogram's precision)."""
    threshold = histogram.get_lowest_equivalent_value(round(seconds * 1e6))
    return sum(
        item.count_at_value_iterated_to
        for item in histogram.get_recorded_iterator()
        if item.value_iterated_to >= threshold
    )


@dataclass(frozen=True)
class Job:
    """One generator process's share of a run (picklable: it crosses a process boundary)."""

    mode: Literal["open", "closed"]
    base: str  # https://localhost:8443, or http://… for a plain server (tests)
    scenario: str
    duration: float  # measured seconds, after the warm-up
    warmup: float = 0.0
    rate: float = 0.0  # open loop: this process's operations per second
    offset: float = 0.0  # open loop: this process's first operation is due at t0 + offset
    concurrency: int = 32  # closed loop: this process's clients
    index: int = 0  # operation numbers are index, index + stride, … (unique across processes)
    stride: int = 1
    setup: dict[str, str] = field(default_factory=dict)
    home: str | None = None  # PAYHUB_HOME holding pki/: client certificate for https
    tenant: str = "acme"
    start_at: float = 0.0  # time.monotonic() of t0 (the clock is shared by the machine's processes)
    late_after: float = 0.005
    timeout: float = 30.0  # per operation
    drain: float = 30.0  # open loop: how long to wait for the answers after the last send
    connections: int = 20_000


@dataclass
class RunResult:
    mode: str
    scenario: str
    duration: float
    target_rate: float = 0.0  # open loop; 0 for closed
    concurrency: int = 0  # closed loop
    sent: int = 0  # measured operations started
    completed: int = 0  # measured operations finished (answered or failed)
    total: int = 0  # every operation finished, warm-up included
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    late: int = 0  # open loop: measured sends more than late_after behind schedule
    max_send_lag: float = 0.0  # seconds
    first_send: float = 0.0
    last_send: float = 0.0
    window_start: float = 0.0  # open loop: t0 + warm-up, the first measured operation's due time
    last_done: float = 0.0  # open loop: when the last measured operation finished
    processes: int = 1
    histogram: bytes = b""  # HdrHistogram.encode() of the measured latencies, in µs

    def hist(self) -> Any:
        histogram = new_histogram()
        if self.histogram:
            histogram.decode_and_add(self.histogram)
        return histogram

    @property
    def throughput(self) -> float:
        """Operations finished per second: in the measured window (closed loop), or from the first
        measured operation's due time to the last one's answer (open loop), so that a server that
        falls behind shows less than the offered rate."""
        span = self.duration
        if self.mode == "open" and self.last_done > self.window_start > 0:
            span = max(span, self.last_done - self.window_start)
        return self.completed / span if span else 0.0

    @property
    def send_rate(self) -> float:
        """Operations actually sent per second (open loop): below the target when the generator lags."""
        span = self.last_send - self.first_send
        return (self.sent - 1) / span if self.sent > 1 and span > 0 else 0.0

    def percentiles(self) -> dict[str, float]:
        """p50, p99, p99.9 and max in milliseconds."""
        histogram = self.hist()
        if histogram.get_total_count() == 0:
            return {"p50": 0.0, "p99": 0.0, "p99.9": 0.0, "max": 0.0}
        return {
            "p50": histogram.get_value_at_percentile(50.0) / 1000,
            "p99": histogram.get_value_at_percentile(99.0) / 1000,
            "p99.9": histogram.get_value_at_percentile(99.9) / 1000,
            "max": histogram.get_max_value() / 1000,
        }

    def summary(self) -> dict[str, Any]:
        """Every figure but the histogram's bytes (JSON-ready)."""
        return {
            "mode": self.mode,
            "scenario": self.scenario,
            "duration": self.duration,
            "target_rate": self.target_rate,
            "concurrency": self.concurrency,
            "sent": self.sent,
            "completed": self.completed,
            "total": self.total,
            "throughput": self.throughput,
            "send_rate": self.send_rate,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "late": self.late,
            "max_send_lag_ms": self.max_send_lag * 1000,
            "processes": self.processes,
            "latency_ms": self.percentiles(),
            "histogram": self.histogram.decode(),
        }

    def line(self) -> str:
        pct = self.percentiles()
        rate = (
            f"target {self.target_rate:.0f}/s sent {self.send_rate:.0f}/s"
            if self.mode == "open"
            else f"{self.concurrency} clients"
        )
        return (
            f"{self.scenario} {self.mode}: {rate}, {self.throughput:.0f} ops/s, "
            f"p50 {pct['p50']:.2f} ms p99 {pct['p99']:.2f} ms p99.9 {pct['p99.9']:.2f} ms "
            f"max {pct['max']:.2f} ms, errors {self.errors}, late sends {self.late}"
        )


def merge(results: Sequence[RunResult]) -> RunResult:
    """One result from the parts of a run split over processes."""
    first = results[0]
    histogram = new_histogram()
    kinds: Counter[str] = Counter()
    for part in results:
        if part.histogram:
            histogram.decode_and_add(part.histogram)
        kinds.update(part.error_kinds)
    sends = [part for part in results if part.sent]
    return replace(
        first,
        target_rate=sum(part.target_rate for part in results),
        concurrency=sum(part.concurrency for part in results),
        sent=sum(part.sent for part in results),
        completed=sum(part.completed for part in results),
        total=sum(part.total for part in results),
        errors=sum(part.errors for part in results),
        error_kinds=dict(kinds),
        late=sum(part.late for part in results),
        max_send_lag=max(part.max_send_lag for part in results),
        first_send=min((part.first_send for part in sends), default=0.0),
        last_send=max((part.last_send for part in sends), default=0.0),
        window_start=min((part.window_start for part in sends), default=0.0),
        last_done=max((part.last_done for part in results), default=0.0),
        processes=len(results),
        histogram=histogram.encode(),
    )


def session_for(job: Job) -> aiohttp.ClientSession:
    ssl = ssl_context(Path(job.home or "var"), job.tenant) if job.base.startswith("https") else False
    connector = aiohttp.TCPConnector(ssl=ssl, limit=job.connections, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=job.timeout),
        json_serialize=lambda value: orjson.dumps(value).decode(),
    )


class _Tally:
    """What a run records: the result's counters, the latency histogram and the error kinds."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        self.histogram = new_histogram()
        self.kinds: Counter[str] = Counter()

    def finished(self, latency: float, error: str | None, *, measured: bool) -> None:
        self.result.total += 1
        if measured:
            self.result.completed += 1
            self.result.last_done = time.monotonic()
            record(self.histogram, latency)
            if error is not None:
                self.result.errors += 1
                self.kinds[error] += 1

    def sent(self, now: float, lag: float, late_after: float) -> None:
        result = self.result
        result.sent += 1
        result.first_send = result.first_send or now
        result.last_send = now
        result.max_send_lag = max(result.max_send_lag, lag)
        result.late += lag > late_after

    def close(self) -> RunResult:
        self.result.error_kinds = dict(self.kinds)
        self.result.histogram = self.histogram.encode()
        return self.result


async def _attempt(job: Job, session: aiohttp.ClientSession, n: int) -> str | None:
    """One operation: None when it succeeded, else its error kind (an exception's class name)."""
    try:
        return await OPERATIONS[job.scenario](session, job.base, n, job.setup)
    except Exception as exc:
        return type(exc).__name__


async def open_loop(job: Job, session: aiohttp.ClientSession) -> RunResult:
    """Operations due at t0 + offset + i / rate for warmup + duration seconds (the warm-up's unrecorded)."""
    tally = _Tally(RunResult("open", job.scenario, job.duration, target_rate=job.rate))
    t0 = job.start_at or time.monotonic()
    measured_from = t0 + job.warmup
    tally.result.window_start = measured_from + job.offset
    inflight: dict[asyncio.Task[None], tuple[float, bool]] = {}  # task: (intended time, measured)

    async def one(n: int, intended: float, measured: bool) -> None:
        error = await _attempt(job, session, n)
        tally.finished(time.monotonic() - intended, error, measured=measured)

    for i in range(round((job.warmup + job.duration) * job.rate)):
        intended = t0 + job.offset + i / job.rate
        now = time.monotonic()
        if intended > now:
            await asyncio.sleep(intended - now)
            now = time.monotonic()
        else:
            await asyncio.sleep(0)  # behind schedule: send at once, but still let the answers in
        measured = intended >= measured_from
        if measured:
            tally.sent(now, now - intended, job.late_after)
        task = asyncio.create_task(one(job.index + i * job.stride, intended, measured))
        inflight[task] = (intended, measured)
        task.add_done_callback(lambda done: inflight.pop(done, None))

    if inflight:
        _, unfinished = await asyncio.wait(list(inflight), timeout=job.drain)
        now = time.monotonic()
        # Never answered: an error, and at least as slow as we waited (recorded, not dropped).
        for task in unfinished:
            intended, measured = inflight[task]
            task.cancel()
            tally.finished(now - intended, "unanswered", measured=measured)
    return tally.close()


async def closed_loop(job: Job, session: aiohttp.ClientSession) -> RunResult:
    """``concurrency`` clients back to back; operations finishing inside the measured window count."""
    tally = _Tally(RunResult("closed", job.scenario, job.duration, concurrency=job.concurrency))
    t0 = job.start_at or time.monotonic()
    measured_from = t0 + job.warmup
    end = measured_from + job.duration
    numbers = itertools.count(job.index, job.stride)
    if (delay := t0 - time.monotonic()) > 0:
        await asyncio.sleep(delay)

    async def client() -> None:
        while (started := time.monotonic()) < end:
            error = await _attempt(job, session, next(numbers))
            done = time.monotonic()
            measured = measured_from <= done <= end
            tally.result.sent += measured
            tally.finished(done - started, error, measured=measured)

    await asyncio.gather(*(client() for _ in range(job.concurrency)))
    return tally.close()


async def execute(job: Job) -> RunResult:
    async with session_for(job) as session:
        if job.mode == "open":
            return await open_loop(job, session)
        return await closed_loop(job, session)


def run_coroutine(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop when available (cheaper TLS and sockets for the generator too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def run_job(job: Job) -> RunResult:
    return run_coroutine(execute(job))


# ---- several generator processes -------------------------------------------------------------


def split(job: Job, processes: int) -> list[Job]:
    """A run's jobs for ``processes`` workers: rate/N each, staggered by 1/rate; or C/N clients each."""
    if processes <= 1:
        return [job]
    if job.mode == "open":
        return [
            replace(job, rate=job.rate / processes, offset=k / job.rate, index=k, stride=processes)
            for k in range(processes)
        ]
    shares = [job.concurrency // processes + (k < job.concurrency % processes) for k in range(processes)]
    return [
        replace(job, concurrency=share, index=k, stride=processes) for k, share in enumerate(shares) if share
    ]


def _worker(conn: Connection, cores: frozenset[int] | None) -> None:
    if cores is not None:
        os.sched_setaffinity(0, cores)
    while True:
        job = conn.recv()
        if job is None:
            return
        try:
            conn.send(run_job(job))
        except BaseException as exc:
            conn.send(RuntimeError(f"generator failed: {exc!r}"))


class GeneratorPool:
    """N long-lived generator processes (started once, spawned, pinned to ``cores``)."""

    def __init__(self, processes: int = 1, cores: frozenset[int] | None = None) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[multiprocessing.process.BaseProcess, Connection]] = []
        for k in range(max(1, processes)):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker, args=(child, cores), name=f"bench-generator-{k}", daemon=True
            )
            process.start()
            child.close()
            self._workers.append((process, parent))

    @property
    def size(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process, _ in self._workers if process.pid is not None]

    async def run(self, job: Job) -> RunResult:
        """Split ``job`` over the workers, start them on a common t0 (``job.start_at``, else in
        START_DELAY seconds) and merge what they measured."""
        jobs = split(
            job if job.start_at else replace(job, start_at=time.monotonic() + START_DELAY), self.size
        )
        for part, (_, conn) in zip(jobs, self._workers, strict=False):
            conn.send(part)
        answers = await asyncio.gather(
            *(asyncio.to_thread(conn.recv) for _, conn in self._workers[: len(jobs)])
        )
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return merge(answers)

    def close(self) -> None:
        for process, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(timeout=3)
            if process.is_alive():
                process.terminate()
                process.join(timeout=3)
            conn.close()


async def _cli(args: argparse.Namespace) -> None:
    home = os.environ.get("PAYHUB_HOME", "var")
    job = Job(
        mode="closed" if args.closed else "open",
        base=args.url,
        scenario=args.scenario,
        duration=args.seconds,
        warmup=args.warmup,
        rate=args.rate,
        concurrency=args.closed or 0,
        home=home,
    )
    if job.scenario == "balance":
        from load.scenarios import setup

        async with session_for(job) as session:
            job = replace(job, setup=await setup("balance", session, job.base))
    pool = GeneratorPool(args.processes)
    try:
        result = await pool.run(job)
    finally:
        pool.close()
    print(result.line())


def main() -> None:
    parser = argparse.ArgumentParser(description="open-loop (or closed-loop) load against a running server")
    parser.add_argument("--url", default="https://localhost:8443")
    parser.add_argument("--scenario", choices=SCENARIOS, default="card")
    parser.add_argument("--rate", type=float, default=100.0, help="operations per second (open loop)")
    parser.add_argument("--closed", type=int, default=0, help="closed loop with this many clients instead")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--processes", type=int, default=1, help="generator processes")
    run_coroutine(_cli(parser.parse_args()))


if __name__ == "__main__":
    main()
