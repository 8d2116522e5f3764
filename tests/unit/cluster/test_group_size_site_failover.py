"""The group-size planner (daily plan, passes, sticky_users) and the site-failover ramps."""

from __future__ import annotations

from dataclasses import replace
from uuid import UUID

import pytest

from palomar.cluster.group_size import GroupSizeSettings, next_pass, plan_group_sizes
from palomar.cluster.model import ForceMove, Site, User
from palomar.cluster.site_failover import SiteFailoverSettings, SiteLink, plan_site_failover
from palomar.cluster.site_selection import SiteChoice, SiteState, select_site
from planner_tables import group

GS = GroupSizeSettings(slack_pct=20, max_planned=1000, per_pass=3)


def _members(**sizes: int) -> dict[str, list[str]]:
    return {name: [f"{name}-u{i:03d}" for i in range(n)] for name, n in sizes.items()}


def _sizes_after(members, moves):
    sizes = {k: len(v) for k, v in members.items()}
    for m in moves:
        sizes[m.from_group] -= 1
        sizes[m.to_group] += 1
    return sizes


def test_groups_on_a_backend_converge_to_the_mean() -> None:
    groups = [group("a", 1), group("b", 1), group("c", 1)]
    members = _members(a=30, b=10, c=20)
    moves = plan_group_sizes(groups, members, GS)
    assert _sizes_after(members, moves) == {"a": 20, "b": 20, "c": 20}
    assert {m.username for m in moves} == {f"a-u{i:03d}" for i in range(20, 30)}  # the last ones by name
    assert all(m.feature == "group-size" for m in moves)


@pytest.mark.parametrize(("case", "groups", "sizes"), [
    ("within slack", [group("a", 1), group("b", 1)], {"a": 22, "b": 19}),
    ("different backends", [group("a", 1), group("b", 2)], {"a": 40, "b": 10}),
    ("sticky users", [group("a", 1, sticky_users=True), group("b", 1)], {"a": 40, "b": 10}),
    ("moving group", [group("a", 1, moving_to=2), group("b", 1)], {"a": 40, "b": 10}),
])
def test_no_regrouping(case, groups, sizes) -> None:
    assert plan_group_sizes(groups, _members(**sizes), GS) == [], case


def test_the_plan_is_capped_and_executed_in_passes() -> None:
    groups = [group("a", 1), group("b", 1)]
    members = _members(a=40, b=0)
    capped = plan_group_sizes(groups, members, GroupSizeSettings(max_planned=7, per_pass=3))
    assert len(capped) == 7
    assert [len(next_pass(capped, done, GS)) for done in (0, 3, 6, 7)] == [3, 3, 1, 0]


def test_the_plan_is_the_same_on_every_run() -> None:
    groups = [group("a", 1), group("b", 1), group("c", 2), group("d", 2)]
    members = _members(a=50, b=5, c=7, d=30)
    assert plan_group_sizes(groups, members, GS) == plan_group_sizes(list(reversed(groups)), members, GS)


# --- site failover -------------------------------------------------------------------------------

A, B, C = Site(UUID(int=1), "a"), Site(UUID(int=2), "b"), Site(UUID(int=3), "c")
SF = SiteFailoverSettings(after=300, recover_after=300, step=25, interval=60)
NOW = 10_000.0


def _kinds(actions):
    return [(x.site, x.kind, x.percentage, x.dest) for x in actions]


def test_a_site_unreachable_long_enough_is_ramped_to_its_failover_site() -> None:
    down = {C.id: SiteLink(False, NOW - 299)}
    assert plan_site_failover(A, [A, B, C], down, {}, NOW, SF) == []  # not long enough
    down = {C.id: SiteLink(False, NOW - 300)}
    actions = plan_site_failover(A, [A, B, C], down, {}, NOW, SF)
    assert _kinds(actions) == [("c", "force_move", 25, (str(A.id),))]
    # only the failover site (first online by name) acts; b leaves it to a
    assert plan_site_failover(B, [A, B, C], {C.id: SiteLink(False, 0)}, {}, NOW, SF) == []
    # the same outage always gets the same force-move ID (a restarted controller continues it)
    assert actions[0].move_id == plan_site_failover(A, [A, B, C], down, {}, NOW + 5, SF)[0].move_id


def test_the_ramp_rises_one_step_per_interval_up_to_100() -> None:
    fm = ForceMove(UUID(int=9), 25, (str(A.id),))
    lost = Site(C.id, "c", force_move=fm)
    down = {C.id: SiteLink(False, 0)}
    assert plan_site_failover(A, [A, lost], down, {C.id: NOW - 59}, NOW, SF) == []
    assert _kinds(plan_site_failover(A, [A, lost], down, {C.id: NOW - 60}, NOW, SF)) == [
        ("c", "force_move", 50, (str(A.id),))]
    full = Site(C.id, "c", force_move=ForceMove(fm.id, 100, (str(A.id),)))
    assert plan_site_failover(A, [A, full], down, {}, NOW, SF) == []
    # a force-move an administrator set towards another site is left alone
    theirs = Site(C.id, "c", force_move=ForceMove(fm.id, 10, (str(B.id),)))
    assert plan_site_failover(A, [A, B, theirs], down, {}, NOW, SF) == []


def test_a_recovered_site_gets_its_users_back_by_a_recover_ramp() -> None:
    fm = ForceMove(UUID(int=9), 100, (str(A.id),))
    up_short = {C.id: SiteLink(True, NOW - 100)}
    lost = Site(C.id, "c", force_move=fm)
    assert plan_site_failover(A, [A, lost], up_short, {}, NOW, SF) == []
    up = {C.id: SiteLink(True, NOW - 300)}
    assert _kinds(plan_site_failover(A, [A, lost], up, {}, NOW, SF)) == [("c", "recover", 25, ())]
    half = Site(C.id, "c", force_move=fm, recover_id=fm.id, recover_percentage=75)
    assert _kinds(plan_site_failover(A, [A, half], up, {}, NOW, SF)) == [("c", "recover", 100, ())]
    done = Site(C.id, "c", force_move=fm, recover_id=fm.id, recover_percentage=100)
    assert _kinds(plan_site_failover(A, [A, done], up, {}, NOW, SF)) == [("c", "clear", 0, ())]
    assert plan_site_failover(A, [A, done], up, {C.id: NOW - 10}, NOW, SF) == []  # interval


def test_the_force_move_it_writes_sends_the_lost_sites_users_to_this_site() -> None:
    """The ramp is stored as `site force-move` stores it (destination site IDs), so routing applies it."""
    down = {C.id: SiteLink(False, NOW - 300)}
    (action,) = plan_site_failover(A, [A, C], down, {}, NOW, replace(SF, step=100))
    lost = replace(C, force_move=ForceMove(action.move_id, action.percentage, action.dest))
    decision = select_site("u", User("u", "g", C.id), "g", None, SiteState(A.id, (A, lost)))
    assert isinstance(decision, SiteChoice)
    assert (decision.site.name, decision.via) == ("a", "force-move")


def test_no_failover_site_online_means_nothing_to_do() -> None:
    offline_a = Site(A.id, "a", status="offline")
    assert plan_site_failover(offline_a, [offline_a, C], {C.id: SiteLink(False, 0)}, {}, NOW, SF) == []
