"""When a site calls another unreachable (cluster/reachability.py): sustained, shared evidence only."""

from __future__ import annotations

import pytest

from palomar.cluster.reachability import (
    DOWN_WINDOW,
    FRESH,
    UP_WINDOW,
    ProbeReport,
    next_report,
    site_reachable,
)

NOW = 10_000.0


def report(name: str, ok: bool, held: float, age: float = 0.0) -> ProbeReport:
    """A proxy whose result `ok` has held for `held` seconds, last probed `age` seconds ago."""
    return ProbeReport(name, ok, NOW - held, NOW - age)


@pytest.mark.parametrize(("reports", "currently", "expected"), [
    # reachable stays reachable while any fresh proxy gets through
    ([report("p1", False, 600), report("p2", True, 5)], True, True),
    # every proxy failing, but not yet for the whole window: no change
    ([report("p1", False, DOWN_WINDOW - 1), report("p2", False, 600)], True, True),
    # two proxies failing for the window: unreachable
    ([report("p1", False, DOWN_WINDOW), report("p2", False, 600)], True, False),
    # one proxy alone reporting: it is "every fresh report"
    ([report("p1", False, DOWN_WINDOW)], True, False),
    # one sustained failure among three failing proxies is below the quorum of 2
    ([report("p1", False, DOWN_WINDOW), report("p2", False, 1), report("p3", False, 2)], True, True),
    # a stale report (its proxy stopped) does not count either way
    ([report("p1", False, 600), report("p2", True, 600, age=FRESH + 1)], True, False),
    # no fresh report: keep what the row says
    ([report("p1", False, 600, age=FRESH + 1)], True, True),
    ([report("p1", True, 600, age=FRESH + 1)], False, False),
    ([], False, False),
    # unreachable comes back only after a success held for the up window
    ([report("p1", True, UP_WINDOW - 1)], False, False),
    ([report("p1", True, UP_WINDOW), report("p2", False, 600)], False, True),
    ([report("p1", False, 600)], False, False),
])
def test_site_reachable(reports, currently, expected):
    assert site_reachable(reports, currently, NOW) is expected


def test_a_flapping_link_never_flips_the_row():
    """Ok and failing in turn every probe: neither window is ever reached."""
    row, previous = True, None
    for step in range(100):
        now = NOW + step * 10
        previous = next_report(previous, "p1", step % 2 == 0, now)
        row = site_reachable([previous], row, now)
        assert row is True


def test_next_report_keeps_since_while_the_result_holds():
    first = next_report(None, "p1", False, NOW)
    later = next_report(first, "p1", False, NOW + 10)
    assert (later.since, later.updated) == (NOW, NOW + 10)
    back = next_report(later, "p1", True, NOW + 20)
    assert (back.ok, back.since) == (True, NOW + 20)
