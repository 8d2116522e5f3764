"""Each proxy probes every other site's load balancer and keeps `site_reachability(local, dest)`.

A probe is a site hop (proxy/site_hop.py) carrying the `site-ping` admin command: it passes the
network path, the other site's HAProxy, one of its proxies and the shared secret, and that
proxy answers OK only while its site has an online backend, every `cluster_site_probe_interval`.
Each proxy stores what it saw in
`proxy_dest_stats` (destination `site:<id>`, keys `site_probe_ok`, `site_probe_since`,
`site_probe_updated`), then applies `cluster.reachability.site_reachable` to the reports of all
proxies of its site and writes the row when the answer changes. Routing reads the row
(`SiteState.unreachable`), and so does the controller's site-failover feature. The proxies are the only
writers of `site_reachability`: every proxy of a site runs the same rule over the same reports, so they
agree without coordination, and the controller only reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from palomar.cluster.model import ProxyDestStat, Site
from palomar.cluster.reachability import ProbeReport, ReachabilityWindows, next_report, site_reachable
from palomar.proxy.hop_client import Established, HopTarget
from palomar.proxy.site_hop import SITE_PING_COMMAND

log = logging.getLogger("palomar.proxy")

_KEYS = ("site_probe_ok", "site_probe_since", "site_probe_updated")


def dest_key(site_id: uuid.UUID) -> str:
    """The `proxy_dest_stats.dest_host` of a site probe (a backend host never looks like this)."""
    return f"site:{site_id}"


async def probe_site(state, site: Site, timeout: float) -> bool:
    """One `site-ping` through `site`'s load balancer."""
    if not site.load_balancer:
        return False
    source = "127.0.0.1"
    target = HopTarget(user="site-ping", protocol="doveadm", session_id=f"site-ping-{uuid.uuid4().hex[:12]}",
                       client=(source, 0), local=(source, 0), client_tls=True, admin=SITE_PING_COMMAND,
                       via_sites=(str(state.site_id),) if state.site_id else ())
    outcome = await state.hops.with_timeout(timeout).connect(site.load_balancer, target)
    if isinstance(outcome, Established):
        outcome.link.close()
        return True
    log.debug("site %s probe failed: %s %s", site.name, outcome.error_code, outcome.text)
    return False


def _reports(rows: list[ProxyDestStat]) -> list[ProbeReport]:
    by_proxy: dict[str, dict[str, float]] = {}
    for row in rows:
        by_proxy.setdefault(row.proxy_host, {})[row.key] = row.value
    return [ProbeReport(host, bool(v["site_probe_ok"]), v["site_probe_since"], v["site_probe_updated"])
            for host, v in by_proxy.items() if all(k in v for k in _KEYS)]


def reachability_windows(cfg) -> ReachabilityWindows:
    """The rule's numbers from this proxy's settings."""
    return ReachabilityWindows(float(cfg["cluster_site_probe_interval"]), float(cfg["cluster_site_unreachable_after"]),
                               float(cfg["cluster_site_reachable_after"]), int(cfg["cluster_site_unreachable_quorum"]))


class SiteProber:
    """Probes the other sites and maintains this site's reachability rows; one per proxy process."""

    def __init__(self, state, windows: ReachabilityWindows | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.windows = windows or ReachabilityWindows()
        self.clock = clock
        self.mine: dict[uuid.UUID, ProbeReport] = {}

    async def run_once(self, now: float | None = None) -> dict[str, bool]:
        """Probe every other site once and update the rows; returns each site's reachability."""
        now = self.clock() if now is None else now
        state = self.state
        geodb = state.router.geodb
        local = state.site_id
        if local is None:
            return {}
        sites = [s for s in await geodb.site_list() if s.id != local and s.load_balancer]
        results = await asyncio.gather(*(probe_site(state, s, self.windows.probe_timeout) for s in sites))
        answers: dict[str, bool] = {}
        changed = False
        for site, ok in zip(sites, results, strict=True):
            report = self.mine[site.id] = next_report(self.mine.get(site.id), state.proxy_host, ok, now)
            await geodb.proxy_dest_stats_put([
                ProxyDestStat(local, dest_key(site.id), state.proxy_host, key, value, "gauge")
                for key, value in zip(_KEYS, (float(report.ok), report.since, report.updated), strict=True)])
            reports = _reports(await geodb.proxy_dest_stats_list(local, dest_key(site.id)))
            row = await geodb.reachability_get(local, site.id)
            currently = True if row is None else row.reachable
            w = self.windows
            reachable = site_reachable(reports, currently, now, down_window=w.down_window, up_window=w.up_window,
                                       quorum=w.quorum, fresh=w.fresh)
            if row is None or reachable != currently:
                await geodb.reachability_set(local, site.id, reachable)
                changed = changed or reachable != currently
                if reachable != currently:
                    log.warning("event=site_reachability src_site=%s dest_site=%s reachable=%s", local, site.name,
                                "yes" if reachable else "no")
            answers[site.name] = reachable
        if changed:
            state.router.invalidate(f"sites/{local}")
        return answers

    async def loop(self) -> None:
        """Probe every `probe_interval` from start to start: a probe that waited out its timeout on a
        silent link does not push the next one back, so the reports stay fresh and the windows hold."""
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
            except Exception as exc:  # a GeoDB outage or a bug must not stop the probing
                log.warning("site probes failed: %s", exc)
            await asyncio.sleep(max(0.0, self.windows.probe_interval - (time.monotonic() - started)))  # the period
