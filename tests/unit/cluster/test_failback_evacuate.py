"""The failback and evacuate planners: shares, tolerance, residence, sticky flags, rate limits."""

from __future__ import annotations

from palomar.cluster.evacuate import EvacuateSettings, plan_evacuate
from palomar.cluster.failback import FailbackSettings, plan_failback
from palomar.cluster.planning import group_counts
from planner_tables import DAY, backend, bid, group, groups_on, moved, plan_input

FB = FailbackSettings(window=DAY, tolerance=1, groups_per_hour=3600, min_residence=300)
EV = EvacuateSettings(after=600, groups_per_hour=600)


def _pairs(plan):
    return [(m.group, m.source, m.dest) for m in plan.moves]


def test_a_returned_backend_is_filled_to_its_share_from_the_fullest() -> None:
    bs = [backend(1), backend(2), backend(3, changed_ago=120)]
    inp = plan_input(bs, groups_on(1, 5) + groups_on(2, 7))
    plan = plan_failback(inp, FailbackSettings(groups_per_hour=0))
    assert plan.moves == [] and "rate limit" in plan.held[0]
    plan = plan_failback(inp, FailbackSettings(groups_per_hour=60, min_residence=300))
    assert _pairs(plan) == [("g2-00", bid(2), bid(3))]  # b2 is furthest above the share of 4; one a minute
    plan = plan_failback(inp, FB)  # a bigger budget: up to share - tolerance (3), from the fullest each time
    assert [(m.source, m.dest) for m in plan.moves] == [(bid(2), bid(3)), (bid(2), bid(3)), (bid(1), bid(3))]


def test_failback_converges_within_tolerance_of_the_shares() -> None:
    bs = [backend(1), backend(2, lf=50), backend(3, changed_ago=120)]
    gs = groups_on(1, 10) + groups_on(2, 10)
    for _ in range(30):
        inp = plan_input(bs, gs)
        plan = plan_failback(inp, FailbackSettings(window=DAY, tolerance=1, groups_per_hour=3600 * 60,
                                                   min_residence=0))
        if not plan.moves:
            break
        moved_names = {m.group: m.dest for m in plan.moves}
        gs = [g if g.name not in moved_names else group(g.name, int(moved_names[g.name].int - 100), ago=0)
              for g in gs]
    counts = group_counts(gs)
    # shares: 20 groups * 100/250 = 8 for b1 and b3, 4 for b2
    assert counts[bid(3)] >= 8 - 1
    assert counts[bid(2)] <= 10 and counts[bid(1)] >= 4


def test_failback_leaves_old_backends_and_backends_within_tolerance_alone() -> None:
    bs = [backend(1), backend(2), backend(3)]  # nobody returned within the window
    assert plan_failback(plan_input(bs, groups_on(1, 9)), FB).moves == []
    bs = [backend(1), backend(2, changed_ago=60)]
    assert plan_failback(plan_input(bs, groups_on(1, 6) + groups_on(2, 5)), FB).moves == []  # share 5.5


def test_failback_never_takes_sticky_moving_or_recent_groups_and_never_to_unhealthy() -> None:
    bs = [backend(1), backend(2, changed_ago=60)]
    gs = [group("s", 1, sticky_backend=True), group("m", 1, moving_to=2), group("r", 1, ago=60),
          group("s2", 1, sticky_backend=True)]
    plan = plan_failback(plan_input(bs, gs), FB)
    assert plan.moves == []
    assert plan_failback(plan_input(bs, groups_on(1, 6), unhealthy=[2]), FB).moves == []


def test_failback_rate_limit_counts_only_its_own_moves() -> None:
    bs = [backend(1), backend(2, changed_ago=60)]
    gs = groups_on(1, 6)
    slow = FailbackSettings(window=DAY, tolerance=1, groups_per_hour=2, min_residence=300)
    assert plan_failback(plan_input(bs, gs, moves=[moved("failback", 60)]), slow).moves == []
    assert len(plan_failback(plan_input(bs, gs, moves=[moved("balance", 60)]), slow).moves) == 1


# --- evacuate ---------------------------------------------------------------------------------------


def test_evacuate_only_after_the_threshold() -> None:
    gs = groups_on(1, 2) + groups_on(2, 1)
    early = [backend(1, "offline", changed_ago=599), backend(2), backend(3)]
    assert plan_evacuate(plan_input(early, gs), EV).moves == []
    late = [backend(1, "offline", changed_ago=600), backend(2), backend(3)]
    plan = plan_evacuate(plan_input(late, gs), EV)
    # spread by groups per load factor: b3 (0) first, then b2 and b3 tie at 1 -> host order
    assert _pairs(plan) == [("g1-00", bid(1), bid(3)), ("g1-01", bid(1), bid(2))]
    assert "offline for 600s" in plan.moves[0].reason


def test_evacuate_skips_standby_sticky_and_moving_and_unhealthy_targets() -> None:
    bs = [backend(1, "offline", changed_ago=DAY), backend(2, "standby", changed_ago=DAY), backend(3),
          backend(4)]
    gs = [group("s", 1, sticky_backend=True), group("m", 1, moving_to=3), group("a", 1)] + groups_on(2, 2)
    plan = plan_evacuate(plan_input(bs, gs, unhealthy=[4]), EV)
    assert _pairs(plan) == [("a", bid(1), bid(3))]


def test_evacuate_is_rate_limited() -> None:
    bs = [backend(1, "offline", changed_ago=DAY), backend(2)]
    gs = groups_on(1, 50)
    assert len(plan_evacuate(plan_input(bs, gs), EV).moves) == 10  # a minute's worth of 600/h
    assert plan_evacuate(plan_input(bs, gs, moves=[moved("evacuate", 1)]), EV).moves == []
    plan = plan_evacuate(plan_input(bs, gs), EvacuateSettings(after=600, groups_per_hour=0))
    assert plan.moves == [] and "50 waiting" in plan.held[0]


def test_evacuate_with_nowhere_to_go_says_so() -> None:
    bs = [backend(1, "offline", changed_ago=DAY), backend(2, lf=0)]
    plan = plan_evacuate(plan_input(bs, groups_on(1, 1)), EV)
    assert plan.moves == [] and "no backend" in plan.held[0]



def test_a_group_moving_to_a_dead_backend_is_sent_elsewhere() -> None:
    bs = [backend(1, "offline", changed_ago=DAY), backend(2), backend(3)]
    gs = [group("stuck", 2, moving_to=1)] + groups_on(2, 2) + groups_on(3, 1)
    plan = plan_evacuate(plan_input(bs, gs), EV)
    # counted on b2 (its move cannot finish); goes to b3, never back to its own source b2
    assert _pairs(plan) == [("stuck", bid(2), bid(3))]
    assert plan.moves[0].replaces_move and "its move to b1 cannot finish" in plan.moves[0].reason


def test_a_group_moving_to_an_offline_backend_counts_where_it_is() -> None:
    from palomar.cluster.planning import group_counts

    gs = [group("a", 2, moving_to=1), group("b", 2, moving_to=3)]
    assert group_counts(gs, offline={bid(1)}) == {bid(2): 1, bid(3): 1}
    assert plan_input([backend(1, "offline"), backend(2), backend(3)], gs).counts == {bid(2): 1, bid(3): 1}
