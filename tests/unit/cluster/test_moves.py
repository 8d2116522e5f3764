"""Move rules: start/finish decisions, the per-user plan, timeouts, completion, straggler window,
user move, evacuation and force-move selection."""

from __future__ import annotations

from uuid import NAMESPACE_DNS, UUID, uuid5

import pytest

from palomar.cluster.model import Backend, Group, Site, SiteView, User
from palomar.cluster.moves import (
    FinishAtOnce,
    LocalUserState,
    Migrate,
    NoMove,
    UserMoveWrite,
    WaitForDest,
    evacuation_plan,
    force_move_selected,
    group_move_action,
    group_move_completion,
    pending_users,
    straggler_active,
    user_move_effective,
    user_move_expired,
)
from palomar.cluster.routing import choose_backend

SITE = Site(id=uuid5(NAMESPACE_DNS, "site1.test"), name="site1")
NOW = 1_700_000_000.0


def bid(name: str) -> UUID:
    return uuid5(NAMESPACE_DNS, f"{name}.backend.test")


def view(*specs: tuple[str, str, int]) -> SiteView:
    return SiteView(SITE, tuple(Backend(id=bid(n), site_id=SITE.id, host=n, status=s, load_factor=lf)
                                for n, s, lf in specs))


VIEW = view(("A", "online", 100), ("B", "online", 100), ("C", "online", 100), ("D", "offline", 100))


def group(backend: str | None, alt: str | None = None, moving: str | None = None, name: str = "g1") -> Group:
    return Group(site_id=SITE.id, name=name, backend_id=bid(backend) if backend else None,
                 alt_backend_id=bid(alt) if alt else None, moving=moving)


# --- what an access means on backend A ------------------------------------------------------------

ACTION_CASES = [
    ("not moving", None, VIEW, NoMove),
    ("stable group", group("A", "B"), VIEW, NoMove),
    ("moving, we are the destination", group("B", "A", "m1"), VIEW, NoMove),
    ("moving, we are the source", group("A", "B", "m1"), VIEW, Migrate),
    ("destination offline", group("A", "D", "m1"), VIEW, WaitForDest),
    ("source standby", group("A", "B", "m1"), view(("A", "standby", 100), ("B", "online", 100)),
     FinishAtOnce),
    ("source offline, dest offline", group("A", "B", "m1"),
     view(("A", "offline", 100), ("B", "offline", 100), ("C", "online", 100)), FinishAtOnce),
    ("source standby, nobody online", group("A", "B", "m1"),
     view(("A", "standby", 100), ("B", "offline", 100)), WaitForDest),
    ("target unknown: abandoned", group("A", "Z", "m1"), VIEW, FinishAtOnce),
]


@pytest.mark.parametrize(("what", "grp", "site_view", "expected"), ACTION_CASES,
                         ids=[c[0] for c in ACTION_CASES])
def test_group_move_action(what: str, grp: Group | None, site_view: SiteView, expected: type) -> None:
    assert isinstance(group_move_action(grp, bid("A"), site_view), expected)


def test_migrate_names_the_destination_and_the_move() -> None:
    action = group_move_action(group("A", "B", "m1"), bid("A"), VIEW)
    assert action == Migrate(VIEW.backend(bid("B")), "m1")


def test_standby_source_finishes_at_the_pre_agreed_destination_like_every_proxy() -> None:
    site_view = view(("A", "standby", 100), ("B", "online", 100), ("C", "online", 100))
    action = group_move_action(group("A", "B", "m1"), bid("A"), site_view)
    assert isinstance(action, FinishAtOnce)
    assert action.dest.host == "B"
    assert action.write.expect_backend_id == bid("A")
    assert action.write.group.backend_id == bid("B") and action.write.group.moving is None
    assert action.write.group.alt_backend_id not in (bid("A"), bid("B"))


def test_abandoned_move_keeps_the_group_here_and_clears_moving() -> None:
    action = group_move_action(group("A", "A", "m1"), bid("A"), VIEW)
    assert isinstance(action, FinishAtOnce)
    assert action.write.group.backend_id == bid("A") and action.write.group.moving is None
    assert action.write.group.alt_backend_id != bid("A")


# --- the plan --------------------------------------------------------------------------------------

PLAN_CASES = [
    ("nobody served", [], []),
    ("all pending", [("u2", None), ("u1", None)], ["u1", "u2"]),
    ("done users skipped", [("u1", "B"), ("u2", None)], ["u2"]),
    ("old move's redirect is redone", [("u1", "C"), ("u2", "B")], ["u1"]),
    ("test user never moves", [("probe-A", None), ("u1", None)], ["u1"]),
]


@pytest.mark.parametrize(("what", "rows", "expected"), PLAN_CASES, ids=[c[0] for c in PLAN_CASES])
def test_pending_users(what: str, rows: list[tuple[str, str | None]], expected: list[str]) -> None:
    users = [LocalUserState(u, r) for u, r in rows]
    assert pending_users(users, "B", exclude=["probe-A"]) == expected


@pytest.mark.parametrize(("elapsed", "expired"), [(0.0, False), (30.9, False), (31.0, True), (120.0, True)])
def test_user_move_timeout(elapsed: float, expired: bool) -> None:
    assert user_move_expired(NOW, NOW + elapsed, 31.0) is expired


# --- completion --------------------------------------------------------------------------------------


def test_completion_moves_the_group_with_a_new_alt_and_clears_moving() -> None:
    g = group("A", "B", "m1")
    done = group_move_completion(g, VIEW.backend(bid("B")), VIEW, VIEW.backend(bid("A")))
    assert done.write.expect_backend_id == bid("A")
    assert done.write.group.backend_id == bid("B")
    assert done.write.group.moving is None
    expected_alt = choose_backend("g1", VIEW, frozenset({bid("B")}))
    assert done.write.group.alt_backend_id == expected_alt.id != bid("B")
    assert (done.source_host, done.dest_host) == ("A", "B")


def test_completion_with_no_other_backend_has_no_alt() -> None:
    site_view = view(("A", "online", 100), ("B", "online", 100))
    lone = view(("B", "online", 100), ("A", "offline", 100))
    source = site_view.backend(bid("A"))
    done = group_move_completion(group("A", "B", "m1"), lone.backend(bid("B")), lone, source)
    assert done.write.group.alt_backend_id is None


@pytest.mark.parametrize(("age", "active"), [(0, True), (3599, True), (3600, False), (7200, False)])
def test_straggler_window_is_one_hour(age: int, active: bool) -> None:
    assert straggler_active(NOW - age, NOW) is active


# --- user move -------------------------------------------------------------------------------------------

OTHER_SITE = uuid5(NAMESPACE_DNS, "site2.test")
USER_CASES = [
    ("no user", None, None),
    ("not moving", User("u", "g1", SITE.id, "f1"), None),
    ("new group", User("u", "g1", SITE.id, "f1", moving_group_name="g2"), UserMoveWrite("g2", SITE.id, "f1")),
    ("new group, site and failover",
     User("u", "g1", SITE.id, "f1", moving_group_name="g2", moving_preferred_site_id=OTHER_SITE,
          moving_failover_site_group_name="f2"),
     UserMoveWrite("g2", OTHER_SITE, "f2")),
    ("only the site", User("u", "g1", SITE.id, None, moving_preferred_site_id=OTHER_SITE),
     UserMoveWrite("g1", OTHER_SITE, None)),
]


@pytest.mark.parametrize(("what", "user", "expected"), USER_CASES, ids=[c[0] for c in USER_CASES])
def test_user_move_effective(what: str, user: User | None, expected: UserMoveWrite | None) -> None:
    assert user_move_effective(user) == expected


def test_user_move_clears_the_pending_columns() -> None:
    fields = UserMoveWrite("g2", SITE.id, None).fields()
    assert fields["group_name"] == "g2"
    assert fields["moving_group_name"] is None and fields["moving_preferred_site_id"] is None
    assert "moving_failover_site_group_name" in fields


# --- evacuation ----------------------------------------------------------------------------------------


def test_evacuation_moves_every_group_of_the_backend_and_nothing_else() -> None:
    groups = [group("A", "B", name=f"g{i}") for i in range(40)] + [group("B", "A", name="other")]
    plan = evacuation_plan(bid("A"), groups, VIEW)
    assert {name for name, _ in plan.moves} == {f"g{i}" for i in range(40)}
    assert all(dest.host in ("B", "C") for _, dest in plan.moves)  # online, not A, not offline D
    assert plan.stuck == ()


def test_evacuation_spreads_by_load_factor() -> None:
    site_view = view(("A", "online", 100), ("B", "online", 100), ("C", "online", 25))
    groups = [group("A", name=f"g{i}") for i in range(1000)]
    counts: dict[str, int] = {}
    for _, dest in evacuation_plan(bid("A"), groups, site_view).moves:
        counts[dest.host] = counts.get(dest.host, 0) + 1
    assert 3.0 < counts["B"] / counts["C"] < 5.5  # 100:25 = 4:1


def test_evacuation_keeps_a_running_move_and_reports_stuck_groups() -> None:
    moving = group("A", "C", "m1", name="moving")
    plan = evacuation_plan(bid("A"), [moving], VIEW)
    assert [(n, d.host) for n, d in plan.moves] == [("moving", "C")]
    alone = view(("A", "online", 100), ("B", "offline", 100))
    assert evacuation_plan(bid("A"), [group("A", name="g")], alone).stuck == ("g",)


# --- force-move -------------------------------------------------------------------------------------------


def test_force_move_selects_the_percentage_and_keeps_earlier_users_when_raised() -> None:
    users = [f"user{i}@example.test" for i in range(4000)]
    move_id = uuid5(NAMESPACE_DNS, "fm1")
    at20 = force_move_selected(move_id, users, 20)
    at50 = force_move_selected(move_id, users, 50)
    assert abs(len(at20) / len(users) - 0.20) < 0.03
    assert abs(len(at50) / len(users) - 0.50) < 0.03
    assert at20 <= at50
    other = force_move_selected(uuid5(NAMESPACE_DNS, "fm2"), users, 20)
    assert len(other & at20) < len(at20) * 0.5  # a new id picks an unrelated set
    assert force_move_selected(move_id, users, 0) == set()
    assert force_move_selected(move_id, users, 100) == set(users)
