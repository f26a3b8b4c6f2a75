"""A per-connector circuit breaker: after N consecutive failures stop calling for a while.

closed ──N failures──► open ──reset timeout──► half_open ──success──► closed
                         ▲                         │
                         └─────────failure─────────┘

While open, calls fail fast with ConnectorUnavailable (nothing is sent, no money can move), which
lets routing fall back and keeps a dead processor from tying up every request until its timeout.
A retry the open circuit blocks after an earlier try of the same call reached the peer is not
"nothing sent": the outbound client (connectors.http) raises OutcomeUnknown for it instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class CircuitState(IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[CircuitState], None] | None = None,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_timeout = reset_timeout
        self._clock = clock
        self._on_change = on_change
        self._failures = 0
        self._opened_at = 0.0
        self._state = CircuitState.CLOSED
        self._trial_in_flight = False

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self._reset_timeout:
            self._set(CircuitState.HALF_OPEN)
        return self._state

    def allow(self) -> bool:
        """May a call go out now? In half-open state only one trial call at a time."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def failure(self) -> None:
        self._trial_in_flight = False
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()
            self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        if state is not self._state:
            self._state = state
            if self._on_change is not None:
                self._on_change(state)
