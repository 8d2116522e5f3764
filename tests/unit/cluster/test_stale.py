"""The stale-if-error rules and the circuit breaker, as tables."""

from __future__ import annotations

import uuid

import pytest

from palomar.cluster.breaker import Breaker, BreakerState
from palomar.cluster.model import Group
from palomar.cluster.ownership import NotMine, Own, Refer
from palomar.cluster.stale import CachedEntry, ownership_when_stale, usable_when_stale

NOW = 1_000_000.0
SITE = uuid.uuid4()
ME = uuid.uuid4()


@pytest.mark.parametrize(("fetched_ago", "max_stale", "trusted_since", "usable"), [
    (10, 3600, 0, True),                # recent, within the bound
    (3600, 3600, 0, True),              # exactly at the bound
    (3601, 3600, 0, False),             # too old
    (10, 0, 0, False),                  # stale use switched off
    (10, 3600, NOW - 5, False),         # fetched before the process (re)started or stalled
    (10, 3600, NOW - 20, True),         # fetched after it
])
def test_usable_when_stale(fetched_ago: float, max_stale: float, trusted_since: float, usable: bool) -> None:
    entry = CachedEntry("{}", NOW - fetched_ago)
    assert usable_when_stale(entry, NOW, max_stale=max_stale, trusted_since=trusted_since) is usable


def test_nothing_cached_is_never_usable() -> None:
    assert not usable_when_stale(None, NOW, max_stale=3600)


def _group(moving: str | None = None) -> Group:
    return Group(site_id=SITE, name="g1", backend_id=ME, moving=moving)


OWN = Own("group is on this backend")


@pytest.mark.parametrize(("decision", "group", "online", "moving_here", "test_user", "expected"), [
    (OWN, _group(), True, False, False, Own),                 # nothing says moving: serve
    (OWN, _group("move-1"), True, False, False, NotMine),     # the group is moving: refuse
    (OWN, _group(), True, True, False, NotMine),              # this backend is moving it: refuse
    (OWN, _group(), False, False, False, NotMine),            # not online in its own view: refuse
    (Refer("b2", "group moved"), _group(), True, False, False, Refer),  # local referral still sends away
    (NotMine("unknown"), None, True, False, False, NotMine),
    (Own("test user of this backend"), None, False, False, True, Own),  # probes always answered
])
def test_ownership_when_stale(decision, group, online, moving_here, test_user, expected) -> None:
    out = ownership_when_stale(decision, group, self_online=online, moving_here=moving_here, test_user=test_user)
    assert isinstance(out, expected)
    if expected is Own and not test_user:
        assert "GeoDB unavailable" in out.reason


def test_breaker_opens_after_failures_in_a_row_and_probes() -> None:
    b = Breaker(failures_to_open=3, open_seconds=5)
    assert b.allow(0) and b.failed(0) is None
    assert b.succeeded() is None  # a success resets the count
    assert b.failed(1) is None and b.failed(1) is None
    assert b.failed(1) is BreakerState.OPEN and not b.available
    assert not b.allow(5.9)                       # skipped while open
    assert b.allow(6.0) and b.state is BreakerState.PROBING
    assert not b.allow(6.1)                       # one probe at a time
    assert b.failed(7) is None and b.state is BreakerState.OPEN  # still down: no new transition
    assert not b.allow(11.9) and b.allow(12)
    assert b.succeeded() is BreakerState.CLOSED and b.available and b.allow(12.1)


def test_breaker_lost_probe_is_replaced() -> None:
    b = Breaker(failures_to_open=1, open_seconds=5)
    b.failed(0)
    assert b.allow(5)                              # probe 1 never reports back (cancelled)
    assert not b.allow(9)
    assert b.allow(10)                             # another caller may probe
