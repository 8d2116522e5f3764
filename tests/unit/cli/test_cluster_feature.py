"""`palomar cluster feature list|set` and the backend status fields the health feature relies on."""

from __future__ import annotations

from cluster_harness import Cluster
from palomar.cli.output import micros_to_iso
from palomar.cluster.features import FEATURES
from palomar.cluster.model import NO_ID, Setting


def _states(cluster: Cluster, *site: str) -> list[tuple[str, str, str, str]]:
    return [(r["site"], r["feature"], r["state"], r["source"]) for r in cluster.json("feature", "list", *site)]


def test_no_settings_at_all_means_every_feature_on(two_sites: Cluster) -> None:
    assert _states(two_sites) == [
        (site, f, "on", "no-settings") for site in ("east", "west") for f in FEATURES
    ]


def test_set_writes_the_controller_row_of_the_site(two_sites: Cluster) -> None:
    result = two_sites.run("feature", "set", "east", "health", "dryrun")
    assert result.exit_code == 0, result.stderr
    assert "every feature of every site was on" in result.stderr
    east = two_sites.db(lambda db: db.site_get_by_name("east"))
    stored = two_sites.db(lambda db: db.setting_list("controller"))
    assert stored == [Setting("controller", "health", "dryrun", site_id=east.id, backend_id=NO_ID)]
    others = [f for f in FEATURES if f != "health"]
    assert _states(two_sites) == [("east", "health", "dryrun", "site"),
                                  *(("east", f, "off", "default") for f in others),
                                  *(("west", f, "off", "default") for f in FEATURES)]
    assert _states(two_sites, "west") == [("west", f, "off", "default") for f in FEATURES]


def test_set_again_overwrites_and_warns_only_the_first_time(two_sites: Cluster) -> None:
    two_sites.ok("feature", "set", "east", "health", "off")
    result = two_sites.run("feature", "set", "east", "health", "ON")
    assert (result.exit_code, result.stderr) == (0, "")
    assert _states(two_sites, "east")[0] == ("east", "health", "on", "site")
    table = two_sites.ok("feature", "list", "east").splitlines()
    assert table[0].split() == ["SITE", "FEATURE", "STATE", "SOURCE"]
    assert table[1].split() == ["east", "health", "on", "site"]
    assert [line.split()[1] for line in table[1:]] == list(FEATURES)


def test_all_sites_row_applies_where_a_site_has_none(two_sites: Cluster) -> None:
    two_sites.db(lambda db: db.setting_put(Setting("controller", "health", "dryrun")))
    two_sites.ok("feature", "set", "west", "health", "on")
    states = _states(two_sites)
    assert ("east", "health", "dryrun", "all-sites") in states and ("west", "health", "on", "site") in states
    assert ("west", "balance", "off", "default") in states


def test_feature_errors(two_sites: Cluster) -> None:
    assert two_sites.fails("feature", "set", "east", "balanse", "on") == (
        "unknown feature 'balanse' (known: health, evacuate, failback, balance, group-size, site-failover)")
    for name in FEATURES:
        two_sites.ok("feature", "set", "east", name, "dryrun")
    assert {r[1]: r[2] for r in _states(two_sites, "east")} == dict.fromkeys(FEATURES, "dryrun")
    two_sites.db(lambda db: db.engine.delete("cluster_settings", {"section": "controller"}))
    assert two_sites.fails("feature", "set", "east", "health", "maybe") == (
        "invalid state 'maybe' (use one of: on, dryrun, off)"
    )
    assert two_sites.fails("feature", "set", "mars", "health", "on") == "site 'mars' does not exist"
    assert two_sites.fails("feature", "list", "mars") == "site 'mars' does not exist"
    assert two_sites.db(lambda db: db.setting_list("controller")) == []


def test_backend_status_and_list_show_reason_and_since_when(two_sites: Cluster) -> None:
    b1 = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))
    changed = two_sites.db(lambda db: db.backend_set_status(b1.site_id, b1.id, "offline",
                                                            "proxy p1: connect failed"))
    since = micros_to_iso(changed)
    status = two_sites.json("backend", "status", "b1.test")
    assert (status["status"], status["status_reason"], status["status_changed"]) == (
        "offline", "proxy p1: connect failed", since
    )
    text = two_sites.ok("backend", "status", "b1.test")
    assert "status_reason:" in text and "proxy p1: connect failed" in text
    table = two_sites.ok("backend", "list", "--site", "east").splitlines()
    assert "STATUS_REASON" in table[0] and "STATUS_CHANGED" in table[0]
    assert "proxy p1: connect failed" in table[1] and since in table[1]
