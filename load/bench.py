"""``make bench``: the gateway's full card-payment pipeline against the reference server, same run.

Starts the sandbox (its own process), the gateway (config/bench.toml: limits raised so only
capacity limits throughput) and the reference server, drives each with the same closed-loop
mTLS client, and prints throughput, p50 and p99 with the gateway/reference ratios. DESIGN §10's
budget: at least half the reference's throughput. (The open-loop percentiles-at-half-load run
with hdrhistogram and plots is the benchmark issue's.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from load.payments_loop import Stats, measure, ssl_context
from load.webhook_receiver import WebhookReceiver

REPO = Path(__file__).resolve().parents[1]


def start(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def ready(url: str, ctx: object | None = None, deadline: float = 90.0) -> None:
    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx or False)) as session:  # type: ignore[arg-type]
        while time.monotonic() - started < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    raise SystemExit(f"{url} did not come up")


def line(name: str, stats: Stats) -> str:
    return (
        f"{name:<10} {stats.rate:8.0f}/s   p50 {stats.p50:6.1f} ms   p99 {stats.p99:6.1f} ms   "
        f"errors {stats.errors}"
    )


def refuse_busy_ports(ports: list[int]) -> None:
    """Measuring someone else's server would print nonsense: stop early instead."""
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                raise SystemExit(f"port {port} is already in use: stop the other payhub first")


async def run(args: argparse.Namespace) -> None:
    refuse_busy_ports([8443, 9108, args.reference_port, 9701, 9702, 9703, 9704, 9705, 9706, 9707])
    home = Path(os.environ.get("PAYHUB_HOME", REPO / "var"))
    env = {**os.environ, "PAYHUB_CONFIG": str(REPO / "config" / "bench.toml"), "PAYHUB_HOME": str(home)}
    init = [sys.executable, "-m", "gateway", "pki", "init"]
    await asyncio.to_thread(subprocess.run, init, cwd=REPO, env=env, check=True, capture_output=True)
    logs = home / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    processes = [
        start("gateway", "sandbox", env=env, log=logs / "sandbox.log"),
        start("gateway", "serve", env=env, log=logs / "gateway.log"),
        start("load.reference", "--port", str(args.reference_port), env=env, log=logs / "reference.log"),
    ]
    try:
        ctx = ssl_context(home, "acme")
        await ready("http://127.0.0.1:9108/readyz")
        await ready(f"https://localhost:{args.reference_port}/", ctx)
        reference = await measure(
            f"https://localhost:{args.reference_port}",
            "card",
            concurrency=args.concurrency,
            seconds=args.seconds,
            home=home,
        )
        receiver = await subscribe(ctx) if args.webhooks else None
        sampler = asyncio.create_task(sample_lag()) if receiver else None
        started = time.time()
        gateway = await measure(
            "https://localhost:8443", "card", concurrency=args.concurrency, seconds=args.seconds, home=home
        )
        ended = time.time()
        if receiver is not None and sampler is not None:
            drained = await drain()
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            webhooks = webhook_line(receiver, started, ended, drained, LAG_SAMPLES)
            receiver.stop()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
    print(line("reference", reference))
    print(line("gateway", gateway))
    print(
        f"ratio      throughput {gateway.rate / reference.rate:.2f} (budget ≥ 0.50)   "
        f"p99 {gateway.p99 / reference.p99:.2f} x the reference"
    )
    if args.webhooks:
        print(webhooks)


# ---- --webhooks: a receiver subscribed to every event while the card load runs ------------------

LAG_SAMPLES: list[float] = []


BENCH_ENDPOINT = "make bench receiver"
LEFT_BY_A_RUN = re.compile(r"http://127\.0\.0\.1:[0-9]+/payhub")
API = "https://localhost:8443/v1/webhook_endpoints"


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
    async with session.get("http://127.0.0.1:9108/metrics") as resp:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--reference-port", type=int, default=8444)
    parser.add_argument(
        "--webhooks",
        action="store_true",
        help="subscribe a local receiver to every event during the card load",
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
