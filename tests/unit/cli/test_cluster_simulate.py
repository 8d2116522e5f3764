"""`palomar cluster simulate`: scenarios on synthetic clusters and on the GeoDB, through the real CLI."""

from __future__ import annotations

from cluster_harness import Cluster
from palomar.cluster.model import Group


def test_rolling_restart_converges_within_the_failback_bound(cluster: Cluster) -> None:
    out = cluster.json("simulate", "--users", "40000", "--backends", "8", "--sites", "2", "--scenario",
                       "rolling-restart", "--restarts", "4")
    assert (out["users"], out["groups"], out["backends"], out["sites"]) == (40000, 800, 8, 2)
    assert out["moves_by_feature"]["failback"] > 0
    assert out["converged_after_secs"] is not None and out["converged_after_secs"] > 0
    site1 = out["distribution"][0]
    # 4 backends of 100 groups each restarted; every one ends within share - tolerance (1)
    assert site1["groups_min"] >= 99 and site1["largest_distance_from_share"] <= 3
    assert out["first_moves"][0]["feature"] in ("failback", "balance")


def test_without_failback_a_rolling_restart_stays_unbalanced(cluster: Cluster) -> None:
    out = cluster.json("simulate", "--users", "40000", "--backends", "8", "--sites", "2", "--scenario",
                       "rolling-restart", "--features", "evacuate")
    assert out["moves"] == 0
    assert out["distribution"][0]["groups_min"] < 50  # the last restarted backend stays nearly empty


def test_backend_added_is_filled_and_load_factor_change_is_balanced(cluster: Cluster) -> None:
    out = cluster.json("simulate", "--users", "20000", "--backends", "4", "--sites", "1", "--scenario",
                       "backend-added")
    assert out["moves_by_feature"]["failback"] >= 70  # balance also moves one an hour towards the empty one
    assert out["distribution"][0]["groups_min"] >= 400 / 5 - 1
    out = cluster.json("simulate", "--users", "20000", "--backends", "4", "--sites", "1", "--scenario",
                       "load-factor-changed", "--features", "balance")
    assert out["moves_by_feature"].get("balance", 0) > 0


def test_a_lost_site_is_ramped_away_and_back(cluster: Cluster) -> None:
    out = cluster.json("simulate", "--users", "10000", "--backends", "6", "--sites", "3", "--scenario",
                       "site-lost", "--features", "site-failover")
    # 10 steps up (10 % each), then 10 recover steps and the clear, after it is back for 5 minutes
    assert out["site_ramps"] == 21
    assert out["converged_after_secs"] is not None
    assert all(s["force_move"] is None for s in out["distribution"])


def test_text_output_names_moves_and_distribution(cluster: Cluster) -> None:
    text = cluster.ok("simulate", "--users", "1000", "--backends", "3", "--sites", "1", "--scenario",
                      "backend-added", "--show-moves", "2")
    assert "world: 1000 users, 300 groups, 3 backends, 1 sites (synthetic)" in text
    assert len([line for line in text.splitlines() if line.startswith("  +")]) == 2
    assert "converged after" in text and "distribution" in text


def test_simulating_the_geodb_snapshot(two_sites: Cluster) -> None:
    two_sites.ok("backend", "update", "--status", "online", "b1.test")
    two_sites.ok("backend", "update", "--status", "online", "b2.test")
    east = two_sites.db(lambda db: db.site_get_by_name("east"))
    b1 = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))
    for n in range(6):
        two_sites.db(lambda db, n=n: db.group_create_if_absent(Group(east.id, f"g{n}", backend_id=b1.id)))
    out = two_sites.json("simulate", "--scenario", "none")
    assert (out["source"], out["groups"], out["sites"]) == ("GeoDB snapshot", 6, 2)
    assert out["moves_by_feature"].get("balance", 0) > 0 or out["moves_by_feature"].get("failback", 0) > 0
    assert two_sites.db(lambda db: db.group_get(east.id, "g0")).backend_id == b1.id  # nothing written


def test_bad_arguments(cluster: Cluster) -> None:
    assert cluster.fails("simulate", "--users", "10") == "a synthetic cluster needs --users, --backends and --sites"
    assert cluster.fails("simulate", "--users", "10", "--backends", "2", "--sites", "3").startswith("need users")
    assert cluster.fails("simulate", "--users", "9", "--backends", "1", "--sites", "1", "--features",
                         "health") == "unknown feature(s) health (simulated: evacuate, failback, balance, site-failover)"
