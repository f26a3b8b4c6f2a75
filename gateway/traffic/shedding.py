"""Load shedding by criticality (Stripe's fleet and worker-utilisation shedders, per process).

Two signals say the process is past what it can serve well:

* event-loop lag: a monitor sleeps ``lag_interval`` and measures how late it wakes up. Every
  request and callback on this loop waits at least that long, so lag is queueing delay itself;
  it is smoothed (EWMA) so one GC pause does not shed, while sustained overload does;
* in-flight requests: work accepted and not finished (queued on the database pool, waiting on a
  connector), which grows before lag does when the bottleneck is downstream.

Each route class has its own thresholds, lowest for reads (lists, catalog), higher for other
writes, highest for payment writes: as load rises reads are refused first (503 ``overloaded``,
``Retry-After: 1``) and payment writes keep the capacity that is left, the "keep a reserve for
critical traffic" rule. Operator routes use the write thresholds.
"""

from __future__ import annotations

import asyncio

from config.settings import SheddingSettings, ShedThreshold
from gateway import errors
from gateway.metrics import Metrics
from gateway.traffic.classes import RouteClass

# Weight of the newest lag sample. A single stall of L seconds moves the average by 0.2 x L, so
# reads are not shed after a lone hiccup shorter than ~0.5 s (GC, one slow synchronous call):
# its backlog is already gone. Lag that persists for about ten samples is taken at face value.
LAG_SMOOTHING = 0.2


class LoadShedder:
    def __init__(self, settings: SheddingSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._thresholds: dict[RouteClass, ShedThreshold] = {
            RouteClass.READ: settings.read,
            RouteClass.WRITE: settings.write,
            RouteClass.OPS: settings.write,
            RouteClass.PAYMENT_WRITE: settings.payment_write,
        }
        self._shed = {rc: metrics.shed_requests.labels(rc.value) for rc in RouteClass}  # bound once
        self.lag = 0.0  # smoothed, seconds
        self.in_flight = 0

    def check(self, route_class: RouteClass) -> None:
        """Raise Unavailable (503) if this class is being shed right now."""
        if not self._settings.enabled:
            return
        threshold = self._thresholds[route_class]
        if self.lag >= threshold.lag or self.in_flight >= threshold.inflight:
            self._shed[route_class].inc()
            raise errors.Unavailable(
                "The server is overloaded; retry after the time in Retry-After.",
                code="overloaded",
                headers={"Retry-After": "1"},
            )

    def record_lag(self, sample: float) -> None:
        self.lag += LAG_SMOOTHING * (max(0.0, sample) - self.lag)

    async def monitor(self) -> None:
        """Sample loop lag forever; also publishes the lag and in-flight gauges (cheaper than per request)."""
        loop = asyncio.get_running_loop()
        interval = self._settings.lag_interval
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            self.record_lag(loop.time() - started - interval)
            self._metrics.event_loop_lag.set(self.lag)
            self._metrics.inflight_requests.set(self.in_flight)
