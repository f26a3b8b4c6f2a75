"""A simple closed-loop payment load over mTLS: N concurrent clients for T seconds.

Not the full benchmark (that one is open-loop against the reference server); this gives
payments/s and latency percentiles for one payment shape against a running gateway:

    PAYHUB_CONFIG=config/bench.toml payhub serve &
    python -m load.payments_loop --method card --concurrency 16 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


def ssl_context(home: Path, tenant: str) -> ssl.SSLContext:
    pki = home / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "clients" / f"{tenant}.pem", pki / "clients" / f"{tenant}.key")
    return ctx


CARDS = 10_000  # distinct cards the load pays with, each again every CARDS payments


def card_number(n: int) -> str:
    """The n-th of CARDS Luhn-valid test numbers (the sandbox acquirer approves them all)."""
    body = f"424242{n % CARDS:09d}"
    total = 0
    for position, digit in enumerate(reversed(body)):
        value = int(digit) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return body + str(-total % 10)


def card_body(n: int) -> dict[str, Any]:
    """A card payment of customer n % 1000 with card n % CARDS: a real stream pays with many cards,
    and one card for every payment would make its velocity counters one row every payment waits on."""
    return {
        "amount": 1000 + n % 500,
        "currency": "CNY",
        "payment_method": {
            "type": "card",
            "card": {"number": card_number(n), "exp_month": 12, "exp_year": 2030, "cvc": "123"},
        },
        "customer": {"id": f"cus_{n % 1000}"},
    }


async def prepare_balance(session: aiohttp.ClientSession, base: str) -> str:
    async with session.post(f"{base}/v1/accounts", json={"currency": "CNY"}) as resp:
        account = (await resp.json())["id"]
    body = {"amount": 99_999_999_999, "currency": "CNY", "payment_method": card_body(0)["payment_method"]}
    headers = {"Idempotency-Key": secrets.token_hex(8)}
    async with session.post(f"{base}/v1/accounts/{account}/topups", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    return str(account)


@dataclass(frozen=True)
class Stats:
    requests: int
    rate: float  # requests per second
    p50: float  # milliseconds
    p99: float
    max: float
    errors: int  # responses other than 200


async def measure(
    base: str, method: str, *, concurrency: int, seconds: float, home: Path, tenant: str = "acme"
) -> Stats:
    """Closed loop: ``concurrency`` clients each send the next payment as soon as one returns."""
    connector = aiohttp.TCPConnector(ssl=ssl_context(home, tenant), limit=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=connector) as session:
        account = await prepare_balance(session, base) if method == "balance" else ""
        deadline = time.perf_counter() + seconds
        counter = 0

        async def client() -> None:
            nonlocal counter, errors
            while time.perf_counter() < deadline:
                counter += 1
                body = card_body(counter)
                if method == "balance":
                    body["payment_method"] = {"type": "balance", "balance": {"account": account}}
                    body["amount"] = 100
                headers = {"Idempotency-Key": secrets.token_hex(12)}
                started = time.perf_counter()
                async with session.post(f"{base}/v1/payments", json=body, headers=headers) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return Stats(len(latencies), len(latencies) / elapsed, pct(0.50), pct(0.99), latencies[-1] * 1000, errors)


async def run(args: argparse.Namespace) -> None:
    home = Path(os.environ.get("PAYHUB_HOME", "var"))
    base = f"https://localhost:{args.port}"
    stats = await measure(
        base, args.method, concurrency=args.concurrency, seconds=args.seconds, home=home, tenant=args.tenant
    )
    print(
        f"method={args.method} concurrency={args.concurrency} requests={stats.requests} "
        f"rate={stats.rate:.0f}/s p50={stats.p50:.1f}ms p99={stats.p99:.1f}ms max={stats.max:.1f}ms "
        f"errors={stats.errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["card", "balance"], default="card")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--tenant", default="acme")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
