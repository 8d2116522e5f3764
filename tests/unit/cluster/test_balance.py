"""The balance planner: Z-scores weighted by load factor, worst to best, one group, every limit."""

from __future__ import annotations

import pytest

from palomar.cluster.balance import BalanceSettings, plan_balance, scores
from planner_tables import backend, bid, group, groups_on, moved, plan_input

S = BalanceSettings(resources=("cpu", "mem"), window=3, min_samples=100, score_delta=1.0,
                    min_spread_pct=10, groups_per_hour=1, min_residence=3600)
HOT, COLD = {"cpu": 90.0, "mem": 80.0}, {"cpu": 10.0, "mem": 20.0}
MID = {"cpu": 50.0, "mem": 50.0}


def _three(load1=HOT, load2=MID, load3=COLD, **kw):
    bs = kw.pop("backends", [backend(1), backend(2), backend(3)])
    gs = kw.pop("groups", groups_on(1, 3) + groups_on(2, 3) + groups_on(3, 3))
    return plan_input(bs, gs, load={1: load1, 2: load2, 3: load3}, **kw)


def _moves(plan):
    return [(m.group, m.source, m.dest) for m in plan.moves]


def test_one_group_from_the_worst_to_the_best() -> None:
    plan = plan_balance(_three(), S)
    assert _moves(plan) == [("g1-00", bid(1), bid(3))]
    assert plan.moves[0].feature == "balance" and "delta" in plan.moves[0].reason


def test_load_factor_weights_the_load() -> None:
    # b3 at load factor 25 carries a quarter of b1's load: per load-factor point it is as busy
    bs = [backend(1), backend(2), backend(3, lf=25)]
    quarter = {"cpu": 22.5, "mem": 20.0}
    score = scores(_three(HOT, HOT, quarter, backends=bs), bs, S)
    assert max(score.values()) - min(score.values()) < S.score_delta
    assert plan_balance(_three(HOT, HOT, quarter, backends=bs), S).moves == []


@pytest.mark.parametrize(("case", "kw", "held"), [
    ("even load", {"load1": MID, "load3": MID}, "scores even"),
    ("spread below noise floor", {"load1": {"cpu": 52, "mem": 51}, "load3": {"cpu": 49, "mem": 50}}, "scores even"),
    ("rate limit", {"moves": [moved("balance", 600)]}, "rate limit"),
    ("warm-up", {"seen": {bid(1): 99, bid(2): 100, bid(3): 99}}, "want 2"),
])
def test_no_move(case, kw, held) -> None:
    plan = plan_balance(_three(**kw), S)
    assert plan.moves == [], case
    assert held in plan.held[0], case


def test_an_older_move_of_the_feature_no_longer_limits() -> None:
    assert len(plan_balance(_three(moves=[moved("balance", 3700)]), S).moves) == 1


def test_never_to_an_unhealthy_backend_next_best_instead() -> None:
    assert _moves(plan_balance(_three(unhealthy=[3]), S)) == [("g1-00", bid(1), bid(2))]


def test_sticky_backend_moving_and_recent_groups_stay_next_worst_gives() -> None:
    gs = [group("s", 1, sticky_backend=True), group("m", 1, moving_to=2), group("r", 1, ago=60)]
    gs += groups_on(2, 2) + groups_on(3, 2)
    # nothing on b1 may move, so the next worst backend gives one of its groups
    assert _moves(plan_balance(_three(groups=gs), S)) == [("g2-00", bid(2), bid(3))]
    # and when the next worst is within the delta of the best, nothing moves at all
    plan = plan_balance(_three(HOT, {"cpu": 11.0, "mem": 21.0}, COLD, groups=gs), S)
    assert plan.moves == [] and "scores even" in plan.held[0]


def test_load_factor_zero_drains_one_group_at_a_time() -> None:
    bs = [backend(1, lf=0), backend(2), backend(3)]
    plan = plan_balance(_three(MID, HOT, COLD, backends=bs), S)
    assert _moves(plan) == [("g1-00", bid(1), bid(3))]
    assert "load factor 0" in plan.moves[0].reason
    assert plan_balance(_three(MID, HOT, COLD, backends=bs, moves=[moved("balance", 60)]), S).moves == []


def test_drain_without_samples_picks_the_target_with_fewest_groups_per_load_factor() -> None:
    bs = [backend(1, lf=0), backend(2), backend(3, lf=50)]
    inp = plan_input(bs, groups_on(1, 2) + groups_on(2, 4) + groups_on(3, 1))
    assert _moves(plan_balance(inp, S)) == [("g1-00", bid(1), bid(3))]


def test_ties_are_broken_by_host_name() -> None:
    plan = plan_balance(_three(HOT, HOT, COLD), S)
    assert _moves(plan) == [("g1-00", bid(1), bid(3))]


def test_a_resource_missing_on_one_backend_is_left_out_for_all() -> None:
    inp = _three({"cpu": 90.0}, {"cpu": 50.0, "mem": 50.0}, {"cpu": 10.0, "mem": 99.0})
    assert _moves(plan_balance(inp, S)) == [("g1-00", bid(1), bid(3))]
