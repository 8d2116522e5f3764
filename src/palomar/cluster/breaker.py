"""A circuit breaker for calls to a store that may be down, as a pure state machine.

While the GeoDB answers, every call goes to it. After `failures_to_open` failures in a row the
breaker opens: callers stop waiting on the GeoDB and go straight to what they last knew, so a
dead store costs a login nothing instead of one timeout each. After `open_seconds` one call
(the probe) is let through; its success closes the breaker, its failure opens it again.

Times are the caller's monotonic seconds; the object holds no clock and does no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BreakerState(Enum):
    CLOSED = "closed"
    """The store answers: call it."""
    OPEN = "open"
    """The store is failing: do not call it until the probe time."""
    PROBING = "probing"
    """One probe call is under way; everybody else still skips the store."""


@dataclass
class Breaker:
    failures_to_open: int = 3
    open_seconds: float = 5.0
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probe_started: float = 0.0

    def allow(self, now: float) -> bool:
        """May this call go to the store? (Turns an expired OPEN into PROBING for one caller.)"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.open_seconds:
            self.state = BreakerState.PROBING
            self.probe_started = now
            return True
        if self.state is BreakerState.PROBING and now - self.probe_started >= self.open_seconds:
            # The probe never reported back (its task was cancelled): let another one try.
            self.probe_started = now
            return True
        return False

    def succeeded(self) -> BreakerState | None:
        """Record a successful call; returns the new state when it changed."""
        self.failures = 0
        if self.state is BreakerState.CLOSED:
            return None
        self.state = BreakerState.CLOSED
        return self.state

    def failed(self, now: float) -> BreakerState | None:
        """Record a failed call; returns the new state when it changed."""
        self.failures += 1
        if self.state is BreakerState.PROBING or (
            self.state is BreakerState.CLOSED and self.failures >= self.failures_to_open
        ):
            changed = self.state is not BreakerState.OPEN and self.state is not BreakerState.PROBING
            self.state = BreakerState.OPEN
            self.opened_at = now
            return self.state if changed else None
        return None

    @property
    def available(self) -> bool:
        """False while the store is considered down (OPEN or PROBING)."""
        return self.state is BreakerState.CLOSED
