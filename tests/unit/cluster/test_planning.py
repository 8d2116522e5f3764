"""Shared planner rules: targets, placement, rate budgets."""

from __future__ import annotations

import pytest

from palomar.cluster.planning import group_counts, movable, pick_group, rate_budget, shares, targets
from planner_tables import NOW, backend, bid, group, moved, plan_input


def test_targets_exclude_offline_standby_drained_and_unhealthy() -> None:
    inp = plan_input([backend(1), backend(2, "offline"), backend(3, "standby"), backend(4, lf=0), backend(5)],
                     [], unhealthy=[5])
    assert [b.host for b in targets(inp)] == ["b1"]


def test_a_moving_group_counts_at_its_destination() -> None:
    assert group_counts([group("a", 1), group("b", 1, moving_to=2), group("c", None)]) == {bid(1): 1, bid(2): 1}


def test_shares_follow_load_factor() -> None:
    assert shares([backend(1, lf=100), backend(2, lf=50)], 30) == {bid(1): 20.0, bid(2): 10.0}
    assert shares([backend(1, lf=0)], 30) == {bid(1): 0.0}


@pytest.mark.parametrize(("g", "expected"), [
    (group("a", 1), True),
    (group("a", 1, ago=60), False),  # too recent
    (group("a", 1, sticky_backend=True), False),
    (group("a", 1, moving_to=2), False),
    (group("a", None), False),
])
def test_movable(g, expected) -> None:
    assert movable(g, NOW, 3600) is expected


def test_pick_group_prefers_the_longest_resident_then_the_name() -> None:
    assert pick_group([group("b", 1, ago=100), group("a", 1, ago=50), group("c", 1, ago=100)], NOW).name == "b"


@pytest.mark.parametrize(("moves", "per_hour", "expected"), [
    ([], 1, 1),
    ([moved("balance", 1800)], 1, 0),             # one per hour, used
    ([moved("balance", 3601)], 1, 1),             # older than an hour
    ([moved("failback", 60)], 1, 1),              # another feature's move does not count
    ([], 0, 0),                                   # 0 per hour: never
    ([], 600, 10),                                # at most a minute's worth per pass
    ([moved("balance", 12)], 600, 2),             # evenly spaced: one per 6 s since the last
    ([moved("balance", 1)], 600, 0),
    ([moved("balance", 100 + i) for i in range(599)] + [moved("balance", 50)], 600, 0),  # hour's budget spent
])
def test_rate_budget(moves, per_hour, expected) -> None:
    assert rate_budget(moves, "balance", NOW, per_hour) == expected


def test_requested_moves_update_counts_and_hide_the_groups_from_later_planners() -> None:
    from palomar.cluster.planning import GroupMove, with_moves_requested

    inp = plan_input([backend(1), backend(2)], [group("a", 1), group("b", 1), group("c", 2)])
    assert inp.counts == {bid(1): 2, bid(2): 1}
    after = with_moves_requested(inp, [GroupMove("evacuate", "a", bid(1), bid(2), "why")])
    assert after.counts == {bid(1): 1, bid(2): 2} == group_counts(after.groups)
    assert [g.name for g in after.movable_on(bid(1), 0)] == ["b"]
    assert inp.counts == {bid(1): 2, bid(2): 1}  # the input itself is unchanged
