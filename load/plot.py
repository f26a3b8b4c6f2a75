"""The picture of a ``make bench`` run: latency against achieved throughput, one colour per server.

Each server's open-loop card runs give one point per offered rate, joined in the order of the offered
rates: p99 (solid) and p50 (dashed), log scale. A server that falls behind achieves less than it was
offered, so its curve bends back to the left as its latency shoots up.
A dotted vertical line marks the server's saturation throughput (closed loop). Where a server's
curve turns upwards is where it stops keeping up; the gap to its dotted line is its headroom.

    python -m load.plot load/results/<timestamp>.json    # redraw a saved run
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

Point = tuple[float, float, float]  # (achieved ops/s, p50 ms, p99 ms)
COLOURS = {"gateway": "tab:red", "A": "tab:blue", "B": "tab:green"}


def plot(
    series: Mapping[str, Sequence[Point]], saturation: Mapping[str, float], path: Path, *, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for name, points in series.items():
        if not points:
            continue
        colour = COLOURS.get(name)
        ordered = list(points)  # in offered-rate order: an overloaded server's curve bends back
        x = [p[0] for p in ordered]
        axes.plot(x, [max(p[2], 1e-3) for p in ordered], "o-", color=colour, label=f"{name} p99")
        axes.plot(x, [max(p[1], 1e-3) for p in ordered], "s--", color=colour, alpha=0.7, label=f"{name} p50")
        if name in saturation:
            axes.axvline(saturation[name], color=colour, linestyle=":", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel("achieved throughput (card payments/s, open loop)")
    axes.set_ylabel("latency from intended send time (ms)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.text(0.01, 0.01, "dotted: saturation (closed loop)", fontsize=7, alpha=0.7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def from_results(path: Path) -> Path:
    """Redraw the PNG of a saved run from its JSON."""
    report = json.loads(path.read_text())
    series: dict[str, list[Point]] = {}
    saturation: dict[str, float] = {}
    for run in report["runs"]:
        if run["scenario"] != "card":
            continue
        if run["label"] == "saturation":
            saturation[run["server"]] = run["throughput"]
        elif run["label"].endswith("%"):
            latency = run["latency_ms"]
            series.setdefault(run["server"], []).append((run["throughput"], latency["p50"], latency["p99"]))
    out = path.with_suffix(".png")
    workers = report["args"].get("workers", 1)
    title = f"make bench {report['timestamp']} ({report['nproc']} cores, {workers} worker(s))"
    plot(series, saturation, out, title=title)
    return out


if __name__ == "__main__":
    for name in sys.argv[1:]:
        print(from_results(Path(name)))
