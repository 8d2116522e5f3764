"""Table tests of the controller's health rule and of feature-state resolution (pure functions)."""

from __future__ import annotations

from uuid import UUID

import pytest

from palomar.cluster.features import FEATURES, feature_source, feature_state
from palomar.cluster.health import (
    Decision,
    HealthRule,
    is_automatic_reason,
    probe_views,
    should_set_online,
)
from palomar.cluster.model import NO_ID, Backend, ProxyDestStat, Setting

SITE = UUID(int=1)
OTHER_SITE = UUID(int=2)
CHANGED = 1_000.0
"""The backend went offline at this Unix time; NOW is a minute later."""
NOW = CHANGED + 60
RULE = HealthRule()


def backend(status: str = "offline", reason: str | None = "proxy p1: 3 destination failures") -> Backend:
    return Backend(UUID(int=10), SITE, "b1.test", status=status, status_reason=reason,
                   status_changed_us=int(CHANGED * 1_000_000))


def probes(proxy: str, *, ok: float | None = None, fail: float | None = None, run: int = 0,
           dest: str = "b1.test") -> list[ProxyDestStat]:
    """The probe gauges one proxy writes (ok/fail: seconds after CHANGED; None: never)."""
    rows = [ProxyDestStat(SITE, dest, proxy, "probe_consecutive_success", run, "gauge"),
            ProxyDestStat(SITE, dest, proxy, "probe_success", 5, "counter")]
    if ok is not None:
        rows.append(ProxyDestStat(SITE, dest, proxy, "probe_last_success", CHANGED + ok, "gauge"))
    if fail is not None:
        rows.append(ProxyDestStat(SITE, dest, proxy, "probe_last_failure", CHANGED + fail, "gauge"))
    return rows


HEALTH_CASES = [
    ("steady probes on one proxy", backend(), probes("p1", ok=55, fail=-5, run=4), RULE,
     "set_online", "probes succeeded on 1 proxy"),
    ("controller's own offline is automatic too", backend(reason="controller: evacuated"),
     probes("p1", ok=55, run=3), RULE, "set_online", "at least 3 in a row"),
    ("already online", backend(status="online"), probes("p1", ok=55, run=9), RULE,
     "none", "status is online"),
    ("standby is never touched", backend(status="standby", reason="proxy p1: x"),
     probes("p1", ok=55, run=9), RULE, "none", "status is standby"),
    ("admin set it offline", backend(reason="admin"), probes("p1", ok=55, run=9), RULE,
     "none", "offline by an administrator (admin)"),
    ("unknown reason counts as an administrator's", backend(reason="maintenance window"),
     probes("p1", ok=55, run=9), RULE, "none", "administrator"),
    ("no reason counts as an administrator's", backend(reason=None), probes("p1", ok=55, run=9), RULE,
     "none", "no reason recorded"),
    ("'proxy' without the space is not automatic", backend(reason="proxyfoo"),
     probes("p1", ok=55, run=9), RULE, "none", "administrator"),
    ("no probe rows", backend(), [], RULE, "none", "no probe results since"),
    ("only successes from before the status change", backend(), probes("p1", ok=-1, run=7), RULE,
     "none", "no probe results since"),
    ("too few successes in a row", backend(), probes("p1", ok=55, run=2), RULE,
     "none", "p1: 2 probe successes in a row, want 3"),
    ("failure inside the quiet window", backend(), probes("p1", ok=55, fail=40, run=3), RULE,
     "none", "probe failed within 30s on p1"),
    ("last probe failed (outside the window)", backend(),
     probes("p1", ok=10, fail=20, run=0), HealthRule(quiet_secs=5), "none", "p1: last probe failed"),
    ("one proxy failing after the change blocks the others", backend(),
     probes("p1", ok=55, run=5) + probes("p2", fail=10, run=0), HealthRule(quiet_secs=5),
     "none", "p2: no probe success since"),
    ("every reporting proxy must have the run", backend(),
     probes("p1", ok=55, run=5) + probes("p2", ok=50, run=1), RULE, "none", "p2: 1 probe successes"),
    ("a silent proxy (nothing since the change) is not counted", backend(),
     probes("p1", ok=55, run=5) + probes("p2", ok=-30, run=1), RULE, "set_online", "on 1 proxy"),
    ("min_proxies not reached", backend(), probes("p1", ok=55, run=5), HealthRule(min_proxies=2),
     "none", "1 proxies agree, want 2"),
    ("min_proxies reached", backend(), probes("p1", ok=55, run=5) + probes("p2", ok=58, run=3),
     HealthRule(min_proxies=2), "set_online", "on 2 proxies (at least 3 in a row"),
    ("probes of another destination do not count", backend(), probes("p1", ok=55, run=5, dest="b2.test"),
     RULE, "none", "no probe results since"),
    ("destination host compared case-insensitively", backend(), probes("p1", ok=55, run=5, dest="B1.TEST"),
     RULE, "set_online", "on 1 proxy"),
    ("a custom run length", backend(), probes("p1", ok=55, run=1), HealthRule(min_consecutive=1),
     "set_online", "at least 1 in a row"),
    ("old failure, quiet window zero", backend(), probes("p1", ok=55, fail=54.9, run=1),
     HealthRule(min_consecutive=1, quiet_secs=0), "set_online", "no failure for 0s"),
]


@pytest.mark.parametrize(("name", "b", "stats", "rule", "action", "why"), HEALTH_CASES,
                         ids=[case[0] for case in HEALTH_CASES])
def test_should_set_online(name: str, b: Backend, stats: list[ProxyDestStat], rule: HealthRule,
                           action: str, why: str) -> None:
    decision = should_set_online(b, stats, NOW, rule)
    assert decision.action == action, decision
    assert why in decision.reason, decision


def test_decision_is_a_plain_value() -> None:
    decision = should_set_online(backend(status="online"), [], NOW, RULE)
    assert decision == Decision("none", "status is online, not offline")


@pytest.mark.parametrize(
    ("reason", "automatic"),
    [("proxy p1: 3 failures", True), ("controller: probes ok", True), ("admin", False), (None, False),
     ("", False), ("Proxy p1: x", False), ("controller without colon", False)],
)
def test_is_automatic_reason(reason: str | None, automatic: bool) -> None:
    assert is_automatic_reason(reason) is automatic


def test_probe_views_one_per_proxy_zero_means_never() -> None:
    rows = probes("p2", ok=5, run=2) + probes("p1", run=0) + [
        ProxyDestStat(SITE, "b1.test", "p1", "probe_last_failure", 0.0, "gauge"),
        ProxyDestStat(SITE, "b1.test", "p1", "session_failure", 9, "counter"),
    ]
    views = probe_views(rows, "b1.test")
    assert [(v.proxy_host, v.last_success, v.last_failure, v.consecutive) for v in views] == [
        ("p1", None, None, 0),
        ("p2", CHANGED + 5, None, 2),
    ]


def setting(value: str, site: UUID = SITE, name: str = "health", section: str = "controller",
            backend_id: UUID = NO_ID) -> Setting:
    return Setting(section, name, value, site_id=site, backend_id=backend_id)


@pytest.mark.parametrize(
    ("settings", "present", "state", "source"),
    [
        ([], False, "on", "no-settings"),
        ([], True, "off", "default"),
        ([setting("dryrun")], True, "dryrun", "site"),
        ([setting("on", site=NO_ID)], True, "on", "all-sites"),
        ([setting("on", site=NO_ID), setting("off")], True, "off", "site"),
        ([setting("dryrun", site=OTHER_SITE)], True, "off", "default"),
        ([setting(" ON ")], True, "on", "site"),
        ([setting("maybe")], True, "off", "default"),
        ([setting("maybe"), setting("dryrun", site=NO_ID)], True, "dryrun", "all-sites"),
        ([setting("on", name="evacuation")], True, "off", "default"),
        ([setting("on", section="other")], True, "off", "default"),
        ([setting("on", backend_id=UUID(int=7))], True, "off", "default"),
    ],
)
def test_feature_state(settings: list[Setting], present: bool, state: str, source: str) -> None:
    assert feature_source(settings, SITE, "health", table_present=present) == (state, source)
    assert feature_state(settings, SITE, "health", table_present=present) == state


def test_health_is_a_feature() -> None:
    assert "health" in FEATURES
