"""Back-off schedule of failed webhook deliveries: doubling from the base, capped, jittered."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.webhook_backoff import backoff_delay, nominal_delay


def test_nominal_schedule_doubles_to_the_cap() -> None:
    delays = [nominal_delay(n, base=5.0, cap=3600.0) for n in range(1, 12)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0, 1280.0, 2560.0, 3600.0]
    assert nominal_delay(10_000, base=5.0, cap=3600.0) == 3600.0  # no overflow on a huge attempt


def test_jitter_keeps_between_half_and_all_of_the_nominal_delay() -> None:
    assert backoff_delay(3, base=5.0, cap=3600.0, rand=lambda: 0.0) == 10.0
    assert backoff_delay(3, base=5.0, cap=3600.0, rand=lambda: 1.0) == 20.0


@given(attempt=st.integers(1, 500), base=st.floats(0.01, 100.0), rand=st.floats(0.0, 1.0))
def test_delay_is_bounded(attempt: int, base: float, rand: float) -> None:
    cap = base * 50
    delay = backoff_delay(attempt, base=base, cap=cap, rand=lambda: rand)
    nominal = nominal_delay(attempt, base=base, cap=cap)
    assert nominal / 2 <= delay <= nominal <= cap


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        nominal_delay(0, base=5.0, cap=10.0)
