"""Proxy routing rules: group -> backend, failover, moves, force-move, pins, referrals.

Backends are written as compact specs so the tables read like the rules:
"A B:off C:standby D:on/0" means A online (load factor 100), B offline, C standby,
D online with load factor 0. Backend "X" is an id no site knows.
"""

from __future__ import annotations

from collections import Counter
from uuid import NAMESPACE_DNS, UUID, uuid5

import pytest

from palomar.cluster.hashing import default_group_name, force_move_bucket
from palomar.cluster.model import Backend, ForceMove, Group, Site, SiteView, User
from palomar.cluster.routing import (
    MAX_REFERRAL_HOPS,
    Assign,
    Failover,
    FollowReferral,
    GroupDecision,
    Own,
    Refer,
    Routed,
    Serve,
    Unavailable,
    apply_force_move,
    check_ownership,
    choose_backend,
    follow_referral,
    group_of,
    pinned_backend,
    resolve_group,
    route_user,
)

SITE = Site(id=uuid5(NAMESPACE_DNS, "site1.test"), name="site1")
STATUS = {"on": "online", "off": "offline", "standby": "standby"}
MOVE_ID = UUID("0f0e0d0c-0b0a-0908-0706-050403020100")
NOW = 1_700_000_000.0


def bid(name: str) -> UUID:
    return uuid5(NAMESPACE_DNS, f"{name}.backend.test")


def names_by_id(view: SiteView) -> dict[UUID, str]:
    return {b.id: b.host for b in view.backends} | {bid("X"): "X"}


def make_view(spec: str, **force_moves: ForceMove) -> SiteView:
    backends = []
    for token in spec.split():
        name, _, rest = token.partition(":")
        status, _, lf = (rest or "on").partition("/")
        backends.append(
            Backend(
                id=bid(name), site_id=SITE.id, host=name, status=STATUS[status],
                load_factor=int(lf or 100), force_move=force_moves.get(name),
            )
        )
    return SiteView(site=SITE, backends=tuple(backends))


def make_group(backend: str | None = "A", alt: str | None = "B", moving: bool = False) -> Group:
    return Group(
        site_id=SITE.id, name="g1",
        backend_id=bid(backend) if backend else None,
        alt_backend_id=bid(alt) if alt else None,
        moving="move-1" if moving else None,
    )


def host_of(backend: Backend | None) -> str | None:
    return backend.host if backend is not None else None


def summary(decision: GroupDecision, view: SiteView) -> tuple[object, ...]:
    """A decision as host names, so expectations read like the rules."""
    names = names_by_id(view)
    match decision:
        case Serve(backend):
            return ("serve", backend.host)
        case Assign(backend, alt):
            return ("assign", backend.host, alt.host if alt else None)
        case Failover(new, alt, moved_from, finishes):
            return ("failover", new.host, alt.host if alt else None, names.get(moved_from), finishes)
        case Unavailable():
            return ("unavailable",)
    raise AssertionError(decision)


# --- resolve_group ----------------------------------------------------------------------------

RESOLVE_CASES = [
    # stable group
    ("A B C", make_group("A", "B"), ("serve", "A")),
    ("A:on/0 B C", make_group("A", "B"), ("serve", "A")),
    ("A:off B C", make_group("A", "B"), ("failover", "B", "C", "A", False)),
    ("A:standby B C", make_group("A", "B"), ("failover", "B", "C", "A", False)),
    ("A B C", make_group("X", "B"), ("failover", "B", "A|C", "X", False)),
    ("A:off B:off C", make_group("A", "B"), ("failover", "C", None, "A", False)),
    ("A:off B:standby C D:off", make_group("A", "B"), ("failover", "C", None, "A", False)),
    ("A:off B", make_group("A", "B"), ("failover", "B", None, "A", False)),
    ("A:off B C", make_group("A", None), ("failover", "B|C", "B|C", "A", False)),
    ("A:off B:on/0 C", make_group("A", "B"), ("failover", "C", "B", "A", False)),
    ("A:off B:on/0 C:off", make_group("A", "B"), ("failover", "B", None, "A", False)),
    ("A:off B:off C:off", make_group("A", "B"), ("unavailable",)),
    ("A:standby B:standby", make_group("A", "B"), ("unavailable",)),
    ("", make_group("A", "B"), ("unavailable",)),
    # no backend yet
    ("A:on/0 C", None, ("assign", "C", "A")),
    ("A:on/0 C", make_group(None, None), ("assign", "C", "A")),
    ("A:standby B:off C", None, ("assign", "C", None)),
    ("A:on/0 B:on/0", None, ("assign", "A|B", "A|B")),
    ("A:off B:standby", None, ("unavailable",)),
    # moving group: the source serves while online; offline/standby source finishes at once
    ("A B C", make_group("A", "B", moving=True), ("serve", "A")),
    ("A:on/0 B C", make_group("A", "B", moving=True), ("serve", "A")),
    ("A:off B C", make_group("A", "B", moving=True), ("failover", "B", "C", "A", True)),
    ("A:standby B C", make_group("A", "B", moving=True), ("failover", "B", "C", "A", True)),
    ("A:off B", make_group("A", "B", moving=True), ("failover", "B", None, "A", True)),
    ("A:off B:on/0 C", make_group("A", "B", moving=True), ("failover", "B", "C", "A", True)),
    ("A:off B:off C", make_group("A", "B", moving=True), ("failover", "C", None, "A", True)),
    ("A:off B:off C:standby", make_group("A", "B", moving=True), ("unavailable",)),
]
RESOLVE_IDS = [
    "stable-online-serves",
    "stable-draining-still-serves",
    "offline-goes-to-alt",
    "standby-like-offline",
    "unknown-backend-like-offline",
    "alt-offline-goes-to-another",
    "alt-standby-goes-to-another",
    "last-backend-gets-no-new-alt",
    "no-alt-chooses-any-online",
    "draining-alt-skipped",
    "draining-alt-used-when-only-one",
    "all-offline-unavailable",
    "all-standby-unavailable",
    "no-backends-unavailable",
    "new-group-avoids-load-factor-0",
    "group-row-without-backend",
    "new-group-only-online",
    "all-load-factor-0-still-serves",
    "new-group-nothing-online",
    "moving-served-by-source",
    "moving-draining-source-serves",
    "moving-offline-source-finishes-to-dest",
    "moving-standby-source-finishes-to-dest",
    "moving-finishes-without-new-alt",
    "moving-finishes-to-draining-dest",
    "moving-dest-offline-goes-elsewhere",
    "moving-nothing-online",
]


@pytest.mark.parametrize(("spec", "group", "expected"), RESOLVE_CASES, ids=RESOLVE_IDS)
def test_resolve_group(spec: str, group: Group | None, expected: tuple[object, ...]) -> None:
    view = make_view(spec)
    got = summary(resolve_group(group, "g1", view), view)
    assert len(got) == len(expected)
    for have, want in zip(got, expected, strict=True):
        if isinstance(want, str) and "|" in want:
            assert have in want.split("|"), (got, expected)
        else:
            assert have == want, (got, expected)


def test_failover_never_picks_the_failed_backend_as_new_alt() -> None:
    view = make_view("A:off B C D E")
    for i in range(300):
        decision = resolve_group(make_group("A", None), f"g{i}", view)
        assert isinstance(decision, Failover)
        assert decision.new_alt is not None
        assert decision.new_alt.id not in {decision.new_backend.id, bid("A")}


def test_unavailable_is_a_temporary_reason_naming_the_group() -> None:
    decision = resolve_group(make_group("A", "B"), "default-7", make_view("A:off B:off"))
    assert decision == Unavailable("no online backend for group default-7")


# --- choose_backend -----------------------------------------------------------------------------


def test_load_factor_zero_gets_no_new_groups() -> None:
    view = make_view("A B:on/0 C")
    picks = Counter(host_of(choose_backend(f"default-{i}", view)) for i in range(1000))
    assert picks["B"] == 0
    assert picks["A"] > 400 and picks["C"] > 400


def test_choose_backend_follows_load_factor() -> None:
    view = make_view("A B:on/50")
    picks = Counter(host_of(choose_backend(f"default-{i}", view)) for i in range(3000))
    assert 1.75 < picks["A"] / picks["B"] < 2.3


def test_choose_backend_respects_exclude_and_status() -> None:
    view = make_view("A B:off C:standby D")
    for i in range(200):
        chosen = choose_backend(f"g{i}", view, frozenset({bid("A")}))
        assert chosen is not None and chosen.host == "D"
    assert choose_backend("g", view, frozenset({bid("A"), bid("D")})) is None


def test_every_proxy_chooses_the_same_backend_whatever_its_backend_order() -> None:
    view = make_view("A B:on/50 C D:on/75 E")
    shuffled = SiteView(site=SITE, backends=tuple(reversed(view.backends)))
    for i in range(500):
        assert choose_backend(f"g{i}", view) == choose_backend(f"g{i}", shuffled)


def test_adding_a_backend_moves_about_one_nth_of_new_group_placements() -> None:
    before, after = make_view("A B C"), make_view("A B C D")
    keys = [f"default-{i}" for i in range(3000)]
    moved = [k for k in keys if choose_backend(k, before) != choose_backend(k, after)]
    assert all(host_of(choose_backend(k, after)) == "D" for k in moved)
    assert abs(len(moved) / len(keys) - 0.25) < 0.03


# --- force-move -------------------------------------------------------------------------------


def force(percentage: int, *dest: str, move_id: UUID = MOVE_ID) -> ForceMove:
    return ForceMove(id=move_id, percentage=percentage, dest=dest)


USERS = [f"user{i}" for i in range(2000)]


@pytest.mark.parametrize(
    ("spec", "move", "expected_moved_share", "expected_dests"),
    [
        pytest.param("A B", None, 0.0, set(), id="no-force-move"),
        pytest.param("A B", force(0, "B"), 0.0, set(), id="zero-percent"),
        pytest.param("A B", force(100, "B"), 1.0, {"B"}, id="hundred-percent"),
        pytest.param("A B", force(30, "B"), 0.30, {"B"}, id="thirty-percent"),
        pytest.param("A B:off", force(100, "B"), 0.0, set(), id="dest-offline-stays"),
        pytest.param("A B:standby", force(100, "B"), 0.0, set(), id="dest-standby-stays"),
        pytest.param("A", force(100, "nohost"), 0.0, set(), id="dest-unknown-stays"),
        pytest.param("A", force(100, "A"), 0.0, set(), id="dest-is-self-ignored"),
        pytest.param("A B C", force(100, "B", "C"), 1.0, {"B", "C"}, id="two-dests-share"),
        pytest.param("A B:off C", force(100, "B", "C"), 1.0, {"C"}, id="offline-dest-skipped"),
    ],
)
def test_force_move(
    spec: str, move: ForceMove | None, expected_moved_share: float, expected_dests: set[str]
) -> None:
    view = make_view(spec, A=move) if move else make_view(spec)
    source = view.backend(bid("A"))
    assert source is not None
    dests = {u: apply_force_move(source, u, view) for u in USERS}
    moved = {u: d.host for u, d in dests.items() if d is not None}
    assert abs(len(moved) / len(USERS) - expected_moved_share) < 0.03
    assert set(moved.values()) == expected_dests
    if move is not None and expected_dests:
        assert set(moved) == {u for u in USERS if force_move_bucket(move.id, u) < move.percentage}


def test_force_move_spreads_over_destinations_and_is_stable_per_user() -> None:
    view = make_view("A B C", A=force(100, "B", "C"))
    source = view.backend(bid("A"))
    assert source is not None
    first = Counter(host_of(apply_force_move(source, u, view)) for u in USERS)
    again = Counter(host_of(apply_force_move(source, u, view)) for u in USERS)
    assert first == again
    assert 800 < first["B"] < 1200


def test_raising_the_percentage_keeps_earlier_users_moved() -> None:
    def moved_at(percentage: int, move_id: UUID = MOVE_ID) -> set[str]:
        view = make_view("A B", A=force(percentage, "B", move_id=move_id))
        source = view.backend(bid("A"))
        assert source is not None
        return {u for u in USERS if apply_force_move(source, u, view) is not None}

    ten, twenty, fifty = moved_at(10), moved_at(20), moved_at(50)
    assert ten < twenty < fifty
    # A new id starts a fresh selection: most of the first 10 % are not in it.
    fresh_ten = moved_at(10, UUID(int=42))
    assert len(ten & fresh_ten) < len(ten) / 2


def test_force_move_leaves_the_group_where_it_is() -> None:
    view = make_view("A B C", A=force(100, "C"))
    user = User("alice", group_name="g1")
    decision = route_user("alice", user, {"g1": make_group("A", "B")}, view, group_count=10, now=NOW)
    assert isinstance(decision, Routed)
    assert decision.backend.host == "C"
    assert decision.via == "force-move"
    assert decision.group_decision == Serve(view.backend(bid("A")))  # type: ignore[arg-type]
    assert decision.group_write is None and decision.user_write is None


def test_force_move_applies_to_the_failover_backend() -> None:
    view = make_view("A:off B C", B=force(100, "C"))
    groups = {"g1": make_group("A", "B")}
    decision = route_user("bob", User("bob", "g1"), groups, view, group_count=10, now=NOW)
    assert isinstance(decision, Routed)
    assert decision.backend.host == "C" and decision.via == "force-move"
    # The group itself still fails over to its alt.
    assert decision.group_write is not None
    assert decision.group_write.group.backend_id == bid("B")


# --- passdb host pin ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("B", "B", id="known-online"),
        pytest.param("C", None, id="known-offline"),
        pytest.param("D", None, id="known-standby"),
        pytest.param("elsewhere", None, id="unknown-host"),
        pytest.param("", None, id="empty"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_pinned_backend(host: str | None, expected: str | None) -> None:
    pinned = pinned_backend(host, make_view("A B C:off D:standby"))
    assert (pinned.host if pinned else None) == expected


def test_passdb_host_bypasses_groups_and_writes_nothing() -> None:
    view = make_view("A B", A=force(100, "B"))
    decision = route_user("carol", None, {}, view, group_count=10, now=NOW, passdb_host="A")
    assert decision == Routed(view.backend(bid("A")), None, "passdb-host")  # type: ignore[arg-type]


def test_offline_passdb_host_falls_back_to_group_routing() -> None:
    view = make_view("A:off B")
    decision = route_user("carol", User("carol", "g1"), {"g1": make_group("B", "A")}, view,
                          group_count=10, now=NOW, passdb_host="A")
    assert isinstance(decision, Routed)
    assert (decision.backend.host, decision.via) == ("B", "group")


# --- route_user -------------------------------------------------------------------------------


def test_new_user_joins_default_group_and_assigns_it() -> None:
    view = make_view("A B:on/0")
    decision = route_user("dave@example.com", None, {}, view, group_count=50, now=NOW)
    group_name = default_group_name("dave@example.com", 50)
    assert isinstance(decision, Routed)
    assert decision.group_name == group_name
    assert decision.user_write == User("dave@example.com", group_name)
    assert decision.backend.host == "A"
    assert decision.group_write is not None
    assert decision.group_write.expect_backend_id is None
    written = decision.group_write.group
    assert (written.site_id, written.name) == (SITE.id, group_name)
    assert (written.backend_id, written.alt_backend_id) == (bid("A"), bid("B"))
    assert written.backend_changed_us == int(NOW * 1_000_000)


def test_new_user_routing_is_the_same_on_every_proxy() -> None:
    view = make_view("A B C")
    other = SiteView(site=SITE, backends=tuple(reversed(view.backends)))
    for i in range(200):
        user = f"u{i}"
        assert route_user(user, None, {}, view, group_count=100, now=NOW) == route_user(
            user, None, {}, other, group_count=100, now=NOW
        )


def test_user_row_without_group_keeps_its_other_fields() -> None:
    row = User("erin", group_name=None, metacache_last_host="A")
    decision = route_user("erin", row, {}, make_view("A"), group_count=4, now=NOW)
    assert isinstance(decision, Routed)
    assert decision.user_write == User("erin", default_group_name("erin", 4), metacache_last_host="A")


@pytest.mark.parametrize(
    ("spec", "group", "backend", "expect", "new_backend", "moving_after"),
    [
        pytest.param("A B", make_group("A", "B"), "A", None, None, None, id="stable-no-write"),
        pytest.param("A B", make_group("A", "B", moving=True), "A", None, None, None, id="moving-no-write"),
        pytest.param("A:off B C", make_group("A", "B"), "B", "A", "B", None, id="failover-writes"),
        pytest.param("A:off B C", make_group("A", "B", moving=True), "B", "A", "B", None,
                     id="finished-move-clears-moving"),
    ],
)
def test_route_user_group_writes(
    spec: str, group: Group, backend: str, expect: str | None, new_backend: str | None,
    moving_after: str | None,
) -> None:
    view = make_view(spec)
    decision = route_user("frank", User("frank", "g1"), {"g1": group}, view, group_count=10, now=NOW)
    assert isinstance(decision, Routed)
    assert decision.backend.host == backend
    assert decision.user_write is None
    if new_backend is None:
        assert decision.group_write is None
        return
    assert decision.group_write is not None
    assert decision.group_write.expect_backend_id == bid(expect)  # type: ignore[arg-type]
    assert decision.group_write.group.backend_id == bid(new_backend)
    assert decision.group_write.group.moving == moving_after
    assert decision.group_write.group.backend_changed_us == int(NOW * 1_000_000)


def test_moving_user_is_routed_by_its_current_group() -> None:
    # The user's original backend performs a user move; the proxy keeps sending it there.
    user = User("gina", group_name="g1", moving_group_name="g2")
    groups = {"g1": make_group("A", "B"), "g2": Group(SITE.id, "g2", backend_id=bid("C"))}
    decision = route_user("gina", user, groups, make_view("A B C"), group_count=10, now=NOW)
    assert isinstance(decision, Routed) and decision.backend.host == "A"


def test_route_user_unavailable_writes_nothing() -> None:
    decision = route_user("hank", None, {}, make_view("A:off B:standby"), group_count=10, now=NOW)
    assert isinstance(decision, Unavailable)


# --- referrals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hops", "host", "visited", "expected"),
    [
        pytest.param(0, "B", {"A"}, FollowReferral("B", 1), id="first-referral"),
        pytest.param(2, "D", {"A", "B", "C"}, FollowReferral("D", 3), id="last-allowed"),
        pytest.param(3, "E", {"A", "B", "C", "D"}, Unavailable("referral loop"), id="hop-limit"),
        pytest.param(1, "A", {"A", "B"}, Unavailable("referral loop"), id="back-to-first"),
        pytest.param(0, "A", {"A"}, Unavailable("referral loop"), id="refers-to-itself"),
        pytest.param(0, "", {"A"}, Unavailable("empty referral"), id="empty-host"),
    ],
)
def test_follow_referral(hops: int, host: str, visited: set[str], expected: object) -> None:
    assert follow_referral(hops, MAX_REFERRAL_HOPS, host, visited) == expected


def test_referral_chain_between_two_confused_backends_stops() -> None:
    visited, hops, host = ["A"], 0, "B"
    for next_host in ["A", "B", "A"]:
        step = follow_referral(hops, MAX_REFERRAL_HOPS, host, visited)
        if isinstance(step, Unavailable):
            break
        visited.append(step.host)
        hops, host = step.hops, next_host
    assert step == Unavailable("referral loop")
    assert visited == ["A", "B"]


def test_stale_proxy_costs_one_referral() -> None:
    """A proxy with the group row from before the move finished still reaches the user."""
    view = make_view("A B C")
    stale = make_group("A", "B", moving=True)
    fresh = Group(SITE.id, "g1", backend_id=bid("B"), alt_backend_id=bid("C"))

    routed = route_user("ivy", User("ivy", "g1"), {"g1": stale}, view, group_count=10, now=NOW)
    assert isinstance(routed, Routed) and routed.backend.host == "A"

    at_source = check_ownership(bid("A"), "ivy", fresh, None, ("B", NOW - 60), NOW, site_view=view)
    assert isinstance(at_source, Refer) and at_source.host == "B"

    step = follow_referral(0, MAX_REFERRAL_HOPS, at_source.host, {"A"})
    assert step == FollowReferral("B", 1)
    at_dest = check_ownership(bid("B"), "ivy", fresh, None, None, NOW, site_view=view)
    assert isinstance(at_dest, Own)


@pytest.mark.parametrize("user,expected", [
    (None, default_group_name("new@example.test", 100)),
    (User("new@example.test"), default_group_name("new@example.test", 100)),
    (User("new@example.test", group_name="vip"), "vip"),
], ids=["no-row", "row-without-group", "row-with-group"])
def test_group_of_reads_the_row_or_derives_the_default(user, expected) -> None:
    assert group_of("new@example.test", user, 100) == expected
