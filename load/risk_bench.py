"""``python -m load.risk_bench``: in-process cost of risk screening (features + decide), no I/O.

Runs the default ruleset over varied inputs (ordinary, new device, high amounts, velocity,
list hits, unknown IPs, no USD rate) and prints p50/p99/max per payment in microseconds.
DESIGN §10 leaves about three database round trips per card payment; this is the CPU side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from risk.decision import decide
from risk.defaults import default_ruleset
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
    parser.add_argument("-n", type=int, default=20_000, help="measured iterations (after 1000 warm-up)")
    args = parser.parse_args()
    rng = random.Random(7)
    ruleset, ips = default_ruleset(), StaticIpCountries()
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


if __name__ == "__main__":
    main()
