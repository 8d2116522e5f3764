"""Site reachability: when does site SRC call site DEST unreachable (`site_reachability` row)?

Every proxy of SRC probes DEST's load balancer and reports what it saw (ok or not, since when).
A proxy's own bad minute must not fail a whole site's users over, and a link that comes and
goes must not flip them back and forth, so the row changes only on sustained, shared evidence:

* reachable -> unreachable when no fresh report is ok, and at least `quorum` fresh reports (or
  every fresh report, if fewer proxies report) have failed for `down_window` seconds;
* unreachable -> reachable when a fresh report has been ok for `up_window` seconds;
* with no fresh report at all (SRC's proxies are down or cannot write), the row stays as it is.

Every proxy of SRC runs the same rule over the same reports and writes the same value, so the
write needs no coordination. Pure: reports and time in, a decision out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DOWN_WINDOW = 60.0
"""Seconds every reporting proxy must have failed to reach a site before it is unreachable."""
UP_WINDOW = 30.0
"""Seconds a proxy must have reached a site again before it is reachable."""
QUORUM = 2
"""Failing proxies needed (when at least this many report) to call a site unreachable."""
PROBE_INTERVAL = 10.0
"""Seconds between a proxy's probes of each other site."""
FRESH = 3 * PROBE_INTERVAL
"""A report older than this is ignored (its proxy stopped probing)."""
PROBE_TIMEOUT = 5.0
"""Seconds a probe may take at most (less with a shorter probe interval)."""


@dataclass(frozen=True)
class ReachabilityWindows:
    """The numbers of the rule, from the settings `cluster_site_probe_interval`,
    `cluster_site_unreachable_after`, `cluster_site_reachable_after` and `cluster_site_unreachable_quorum`
    (the defaults above); a report is fresh for three probe intervals."""

    probe_interval: float = PROBE_INTERVAL
    down_window: float = DOWN_WINDOW
    up_window: float = UP_WINDOW
    quorum: int = QUORUM

    @property
    def fresh(self) -> float:
        return 3 * self.probe_interval

    @property
    def probe_timeout(self) -> float:
        """No longer than an interval: a proxy whose probes hang on a silent link still reports at least
        every two intervals, so its report stays fresh and counts towards the quorum."""
        return min(PROBE_TIMEOUT, self.probe_interval)


@dataclass(frozen=True)
class ProbeReport:
    """One proxy's view of one destination site: the last probe's result and since when it holds."""

    proxy_host: str
    ok: bool
    since: float
    """When the result last changed (Unix seconds)."""
    updated: float
    """When the proxy last probed."""


def site_reachable(reports: Iterable[ProbeReport], currently: bool, now: float, *,
                   down_window: float = DOWN_WINDOW, up_window: float = UP_WINDOW, quorum: int = QUORUM,
                   fresh: float = FRESH) -> bool:
    """The value `site_reachability(src, dest).reachable` should have now (`currently`: what it has)."""
    live = [r for r in reports if now - r.updated <= fresh]
    if not live:
        return currently
    if currently:
        if any(r.ok for r in live):
            return True
        sustained = [r for r in live if now - r.since >= down_window]
        return len(sustained) < min(quorum, len(live))
    return any(r.ok and now - r.since >= up_window for r in live)


def next_report(previous: ProbeReport | None, proxy_host: str, ok: bool, now: float) -> ProbeReport:
    """This proxy's report after a probe: `since` moves only when the result changes."""
    since = previous.since if previous is not None and previous.ok == ok else now
    return ProbeReport(proxy_host, ok, since, now)
