"""Keep the demo's processes alive: reap each child that dies, say so, restart it with backoff.

A child that is never waited for stays a zombie, and Dovecot refuses to start again while
the pid in its master.pid still exists, so the first job is reaping. The restart rule is a
pure function of the child's recent deaths and a clock; a child that keeps dying is given
up on (as systemd's StartLimitBurst does) and the rest of the cluster keeps serving.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Child:
    """One supervised server: how to learn that it died, and how to start it again."""

    name: str
    log_path: Path
    returncode: Callable[[], int | None]
    """Poll (and so reap) the process: None while it runs, its exit status once it ended."""
    restart: Callable[[], None]
    """Start it again and wait until it serves; raises RuntimeError or OSError when it cannot."""


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff from `first_delay` to `max_delay`; at most `burst` restarts in `window` seconds."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    burst: int = 5
    window: float = 300.0

    def delay(self, deaths: Sequence[float], now: float) -> float | None:
        """Seconds to wait before the next restart, or None to give up; `deaths` includes the latest one."""
        recent = [t for t in deaths if now - t < self.window]
        if len(recent) > self.burst:
            return None
        return min(self.max_delay, self.first_delay * 2 ** max(0, len(recent) - 1))


def describe_exit(returncode: int) -> str:
    """`exit status 1` or `signal SIGKILL`, from a Popen returncode."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


@dataclass
class _State:
    child: Child
    deaths: list[float] = field(default_factory=list)
    restart_at: float | None = None
    given_up: bool = False


class Supervisor:
    """Call `tick()` periodically; every event is one line given to `report`."""

    def __init__(self, children: Sequence[Child], report: Callable[[str], None],
                 policy: RestartPolicy | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._states = [_State(child) for child in children]
        self._report = report
        self._policy = policy or RestartPolicy()
        self._clock = clock

    def tick(self) -> None:
        for state in self._states:
            if state.given_up:
                continue
            if state.restart_at is None:
                code = state.child.returncode()
                if code is not None:
                    self._died(state, f"exited with {describe_exit(code)}")
            elif self._clock() >= state.restart_at:
                self._restart(state)

    def _died(self, state: _State, what: str) -> None:
        now = self._clock()
        state.deaths.append(now)
        delay = self._policy.delay(state.deaths, now)
        child = state.child
        if delay is None:
            state.given_up = True
            self._report(f"{child.name} {what}; log {child.log_path}; not restarting it: it failed "
                         f"{len(state.deaths)} times, more than {self._policy.burst} in "
                         f"{self._policy.window:.0f}s")
            return
        state.restart_at = now + delay
        self._report(f"{child.name} {what}; log {child.log_path}; restarting it in {delay:g}s")

    def _restart(self, state: _State) -> None:
        state.restart_at = None
        try:
            state.child.restart()
        except (RuntimeError, OSError) as exc:
            first_line = str(exc).strip().splitlines()[:1] or [type(exc).__name__]
            self._died(state, f"did not restart ({first_line[0]})")
            return
        self._report(f"{state.child.name} restarted")
