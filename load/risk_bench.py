"""``python -m load.risk_bench``: the cost of a risk decision.

Without ``--db``: features + decide in process, no I/O, over varied inputs (ordinary, new device,
high amounts, velocity, list hits, unknown IPs, no USD rate); the CPU side.

With ``--db URL`` (a PostgreSQL database it may write to; ``payhub migrate`` is applied first):
the whole ``RiskService.screen`` as a payment runs it, the feature read included (one statement:
velocity buckets, history, lists), against counters seeded for 5,000 customers, 2,000 cards and
500 IPs with a day of minute and hour buckets. The budget (issue "Risk"): p99 < 2 ms.
Prints p50/p99/max per decision in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from risk.decision import decide
from risk.defaults import dev_ruleset
from risk.features import KEY_KINDS, WINDOWS, History, PaymentFacts, Velocity, VelocityCell, build_features
from risk.geo import StaticIpCountries

IPS = ("203.0.113.7", "198.51.100.66", "192.0.2.10", "2001:db8::5", "10.0.0.1", None)
BINS = ("411111", "555555", "621234", "400000", "356600", None)
PHONES = ("+86138{:08d}", "+1415555{:04d}", "+4420718{:05d}", "")


def inputs(rng: random.Random) -> tuple[PaymentFacts, Velocity, History]:
    amount = rng.choice((1285, 12850, 150_000, 1_500_000, 4_000_000))
    customer = rng.randrange(5000)  # a customer keeps one phone: lookups repeat, as in real traffic
    usd, phone = amount / 720 if rng.random() < 0.95 else None, PHONES[customer % 4].format(customer)
    facts = PaymentFacts(
        tenant="acme", amount=amount, currency="CNY", amount_usd=usd, method=rng.choice(("card", "wallet")),
        card_bin=rng.choice(BINS), card_brand="visa", customer_id=f"cus_{customer}", email="li@example.com",
        phone=phone or None, ip=rng.choice(IPS), device_id=rng.choice(("dev_9", "dev_new", None)),
    )  # fmt: skip
    r = rng.randrange
    cells = {
        (rng.choice(KEY_KINDS), rng.choice(WINDOWS)): VelocityCell(r(8), 50.0, r(7), r(7))
        for _ in range(r(4))
    }
    deny = ("ip:198.51.100.66",) if facts.ip == "198.51.100.66" else ()
    return facts, Velocity(cells), History(rng.choice((None, 3, 400)), rng.random() < 0.7, r(4), deny)


def percentiles(samples: list[float]) -> tuple[float, float]:
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        return cuts[49], cuts[98]
    histogram = HdrHistogram(1, 10_000_000, 3)
    for sample in samples:
        histogram.record_value(max(1, round(sample)))
    return histogram.get_value_at_percentile(50), histogram.get_value_at_percentile(99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="measured iterations (after a warm-up)")
    parser.add_argument("--db", help="PostgreSQL URL: measure RiskService.screen, the feature read included")
    args = parser.parse_args()
    if args.db:
        samples = asyncio.run(with_database(args.db, min(args.n, 5000)))
        p50, p99 = percentiles(samples)
        print(f"risk screen with PostgreSQL features, n={len(samples)}: ", end="")
        print(f"p50 {p50:.1f} us  p99 {p99:.1f} us  max {max(samples):.1f} us")
        return
    rng = random.Random(7)
    ruleset, ips = dev_ruleset(), StaticIpCountries()
    cases = [inputs(rng) for _ in range(args.n + 1000)]
    samples: list[float] = []
    for i, (facts, velocity, history) in enumerate(cases):
        started = time.perf_counter_ns()
        decide(ruleset, build_features(facts, velocity, history, ips))
        if i >= 1000:
            samples.append((time.perf_counter_ns() - started) / 1000)
    p50, p99 = percentiles(samples)
    print(f"risk features+decide, {len(ruleset)} rules, n={len(samples)}: ", end="")
    print(f"p50 {p50:.1f} us  p99 {p99:.1f} us  max {max(samples):.1f} us")


async def seed(conn: Any, rng: random.Random) -> None:
    """A day of traffic in the buckets: what the feature read has to sum over."""
    await conn.execute("DELETE FROM risk_counters WHERE tenant = 'bench'")
    now = datetime.now(UTC)
    rows = []
    for kind, keys in (("customer", 5000), ("card", 2000), ("ip", 500)):
        for key in range(keys):
            for minutes in rng.sample(range(60), 6):
                bucket = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes)
                rows.append(("bench", kind, f"{kind}_{key}", "m", bucket, rng.randrange(1, 4), 5000, 0))
            for hours in rng.sample(range(24), 4):
                bucket = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours)
                rows.append(("bench", kind, f"{kind}_{key}", "h", bucket, rng.randrange(1, 9), 9000, 1))
    await conn.copy_records_to_table(
        "risk_counters",
        records=rows,
        columns=["tenant", "kind", "key", "grain", "bucket", "count", "amount_usd", "declines"],
    )


async def with_database(url: str, n: int) -> list[float]:
    from config.settings import load_settings
    from gateway.metrics import Metrics
    from gateway.services.fx import FxRates
    from gateway.services.risk import RiskService
    from gateway.store.migrate import migrate

    rng = random.Random(7)
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
            await seed(conn, rng)
        settings = load_settings(env={}).risk
        service = RiskService(
            pool,
            settings,
            tenants=["bench"],
            usd=FxRates(),
            ip_countries=StaticIpCountries(),
            metrics=Metrics(),
        )
        samples: list[float] = []
        for i in range(n + 500):
            facts, _, _ = inputs(rng)
            facts = replace(
                facts,
                tenant="bench",
                customer_id=f"customer_{rng.randrange(6000)}",
                ip=f"ip_{rng.randrange(600)}",
            )
            started = time.perf_counter_ns()
            await service.screen(facts, card_fingerprint=f"card_{rng.randrange(2500)}")
            if i >= 500:
                samples.append((time.perf_counter_ns() - started) / 1000)
        return samples
    finally:
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM risk_counters WHERE tenant = 'bench'")
        await pool.close()


if __name__ == "__main__":
    main()
