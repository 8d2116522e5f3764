"""The controller's health rule: when may an offline backend go back online? Pure, no I/O.

Proxies mark a backend offline when sessions to it fail, and keep probing it with the test
account; a probe never sets a backend online by itself. The controller reads the probe results
every proxy of the site wrote into `proxy_dest_stats` and decides here. Two things it must never
do: override an administrator (a status whose reason is `admin`, or anything that is not an
automatic reason), and bring back a backend that is still flapping. See docs/design/health.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from palomar.cluster.features import FEATURES, feature_state
from palomar.cluster.model import Backend, ProxyDestStat

__all__ = [
    "AUTOMATIC_REASON_PREFIXES",
    "FEATURES",
    "Decision",
    "HealthRule",
    "ProbeView",
    "feature_state",
    "is_automatic_reason",
    "probe_views",
    "should_set_online",
]

AUTOMATIC_REASON_PREFIXES = ("proxy ", "controller:")
"""Reasons written by automation: `proxy <proxy_host>: <why>` and `controller: <why>`."""

PROBE_LAST_SUCCESS = "probe_last_success"
PROBE_LAST_FAILURE = "probe_last_failure"
PROBE_CONSECUTIVE = "probe_consecutive_success"
PROBE_GAUGES = (PROBE_LAST_SUCCESS, PROBE_LAST_FAILURE, PROBE_CONSECUTIVE)
"""The keys each proxy's view is made of (one view per proxy_host that wrote any of them)."""


@dataclass(frozen=True)
class HealthRule:
    """How much agreement the rule wants before it trusts a backend again."""

    min_consecutive: int = 3
    """Probe successes in a row (since that proxy's last failure) every reporting proxy must have."""
    quiet_secs: float = 30.0
    """No probe may have failed, on any proxy, within this many seconds."""
    min_proxies: int = 1
    """Proxies that must have reported successful probes since the status change."""


@dataclass(frozen=True)
class Decision:
    action: Literal["set_online", "none"]
    reason: str


@dataclass(frozen=True)
class ProbeView:
    """What one proxy reported about its probes of one backend (None: never reported)."""

    proxy_host: str
    last_success: float | None = None
    last_failure: float | None = None
    consecutive: int = 0


def is_automatic_reason(reason: str | None) -> bool:
    """True for statuses automation set (and may therefore undo); False for an administrator's."""
    return reason is not None and reason.startswith(AUTOMATIC_REASON_PREFIXES)


def probe_views(stats: Iterable[ProxyDestStat], dest_host: str) -> list[ProbeView]:
    """The probe gauges towards `dest_host`, one view per proxy, ordered by proxy host."""
    fields: dict[str, dict[str, float]] = {}
    for s in stats:
        if s.dest_host.lower() != dest_host.lower():
            continue
        if s.key in PROBE_GAUGES:
            fields.setdefault(s.proxy_host, {})[s.key] = s.value
    views = []
    for proxy_host, values in sorted(fields.items()):
        views.append(
            ProbeView(
                proxy_host=proxy_host,
                last_success=values.get(PROBE_LAST_SUCCESS) or None,
                last_failure=values.get(PROBE_LAST_FAILURE) or None,
                consecutive=int(values.get(PROBE_CONSECUTIVE, 0)),
            )
        )
    return views


def _after(moment: float | None, since: float) -> bool:
    return moment is not None and moment > since


def should_set_online(
    backend: Backend, probe_stats: list[ProxyDestStat], now: float, rule: HealthRule
) -> Decision:
    """Whether `backend` may go online now, judged from its site's proxies' probe results.

    `probe_stats` are the `proxy_dest_stats` rows of the backend's site (rows towards other
    destinations are ignored); `now` is Unix seconds. The first failing condition is the reason.
    """
    if backend.status != "offline":
        return Decision("none", f"status is {backend.status}, not offline")
    if not is_automatic_reason(backend.status_reason):
        who = backend.status_reason or "no reason recorded"
        return Decision("none", f"offline by an administrator ({who}); only an administrator sets it online")
    since = (backend.status_changed_us or 0) / 1_000_000

    views = probe_views(probe_stats, backend.host)
    recent_failures = [
        v.proxy_host for v in views if v.last_failure is not None and now - v.last_failure < rule.quiet_secs
    ]
    if recent_failures:
        return Decision("none", f"probe failed within {rule.quiet_secs:g}s on {', '.join(recent_failures)}")

    reporting = [v for v in views if _after(v.last_success, since) or _after(v.last_failure, since)]
    if not reporting:
        return Decision("none", "no probe results since the backend went offline")
    for v in reporting:
        if not _after(v.last_success, since):
            return Decision("none", f"{v.proxy_host}: no probe success since the backend went offline")
        if v.last_failure is not None and v.last_failure >= (v.last_success or 0):
            return Decision("none", f"{v.proxy_host}: last probe failed")
        if v.consecutive < rule.min_consecutive:
            return Decision(
                "none",
                f"{v.proxy_host}: {v.consecutive} probe successes in a row, want {rule.min_consecutive}",
            )
    if len(reporting) < rule.min_proxies:
        return Decision("none", f"{len(reporting)} proxies agree, want {rule.min_proxies}")

    fewest = min(v.consecutive for v in reporting)
    return Decision(
        "set_online",
        f"probes succeeded on {len(reporting)} "
        f"{'proxy' if len(reporting) == 1 else 'proxies'} "
        f"(at least {fewest} in a row, no failure for {rule.quiet_secs:g}s)",
    )
