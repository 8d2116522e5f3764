"""When a proxy declares a backend offline: the failure-threshold rule, as a pure function.

Every outcome of a session or probe towards one backend is fed to `observe`, which keeps a
short history (`FailureStreak`) and answers with a verdict. The rule (docs/design/health.md):

* only *destination failures* count: the backend could not be reached or broke the session
  (`proxy_dest_connect_failed`, `_remote_failure`, `_protocol_failure`, `_internal_failure`).
  Authentication failures, auth temp failures and referrals say nothing about the backend's
  health (an LDAP outage would otherwise take every backend out at once);
* a success of a session or a probe towards the backend clears its history;
* the backend goes offline when `failures` destination failures (default 3) happened within
  `window` seconds (default 10) with no success between them, or when a probe and a session
  both failed within the window: the probe, sent right after the first session failure,
  confirms it.

Fast: a dead backend refuses the very next probe, so one failed login is enough to take it
out. Careful: one reset connection is followed by a probe that succeeds, which clears it.
"""

from __future__ import annotations

from dataclasses import dataclass

DESTINATION_FAILURES = frozenset({
    "proxy_dest_connect_failed",
    "proxy_dest_remote_failure",
    "proxy_dest_protocol_failure",
    "proxy_dest_internal_failure",
})

DEFAULT_FAILURES = 3
DEFAULT_WINDOW = 10.0


def is_destination_failure(error_code: str | None) -> bool:
    """Whether a session error code says something about the backend itself."""
    return error_code in DESTINATION_FAILURES


@dataclass(frozen=True)
class ThresholdRule:
    """`cluster_proxy_offline_failures` and `cluster_proxy_offline_window`."""

    failures: int = DEFAULT_FAILURES
    window: float = DEFAULT_WINDOW

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("the failure threshold must be at least 1")
        if self.window <= 0:
            raise ValueError("the failure window must be positive")


@dataclass(frozen=True)
class Outcome:
    """One finished session or probe towards a backend. `error_code` None means success."""

    at: float
    error_code: str | None = None
    probe: bool = False


@dataclass(frozen=True)
class Failure:
    at: float
    error_code: str
    probe: bool


@dataclass(frozen=True)
class FailureStreak:
    """Destination failures towards one backend since its last success, oldest first."""

    failures: tuple[Failure, ...] = ()


@dataclass(frozen=True)
class Keep:
    """Nothing to do."""


@dataclass(frozen=True)
class Confirm:
    """A first session failure: probe the backend now to confirm or clear it."""


@dataclass(frozen=True)
class Offline:
    """Take the backend out; `reason` goes into `status_reason` after `proxy <host>: `."""

    reason: str


Verdict = Keep | Confirm | Offline


def observe(streak: FailureStreak, outcome: Outcome, rule: ThresholdRule) -> tuple[FailureStreak, Verdict]:
    """Add one outcome to a backend's history and decide whether it must go offline."""
    if outcome.error_code is None:
        return FailureStreak(), Keep()
    if not outcome.probe and not is_destination_failure(outcome.error_code):
        return streak, Keep()
    horizon = outcome.at - rule.window
    recent = tuple(f for f in streak.failures if f.at >= horizon)
    failures = (*recent, Failure(outcome.at, outcome.error_code, outcome.probe))
    new = FailureStreak(failures)
    window = f"{rule.window:g}s"
    if len(failures) >= rule.failures:
        return new, Offline(f"{len(failures)} failures within {window}, last {outcome.error_code}")
    sessions = [f for f in failures if not f.probe]
    probes = [f for f in failures if f.probe]
    if sessions and probes:
        return new, Offline(f"probe failed ({probes[-1].error_code}) after a session failed "
                            f"({sessions[-1].error_code}) within {window}")
    if not outcome.probe:
        return new, Confirm()
    return new, Keep()
