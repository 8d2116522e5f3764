"""Backend-side ownership check: own, refer or refuse, for every row the backend may see."""

from __future__ import annotations

from uuid import NAMESPACE_DNS, UUID, uuid5

import pytest

from palomar.cluster.hashing import force_move_bucket
from palomar.cluster.model import Backend, ForceMove, Group, Site, SiteView
from palomar.cluster.ownership import (
    STRAGGLER_WINDOW,
    NotMine,
    Own,
    OwnershipDecision,
    Refer,
    check_ownership,
    expand_test_username,
)

SITE = Site(id=uuid5(NAMESPACE_DNS, "site1.test"), name="site1")
NOW = 1_700_000_000.0


def bid(name: str) -> UUID:
    return uuid5(NAMESPACE_DNS, f"{name}.backend.test")


VIEW = SiteView(
    site=SITE,
    backends=tuple(
        Backend(id=bid(n), site_id=SITE.id, host=n, status=s)
        for n, s in (("A", "online"), ("B", "online"), ("C", "offline"))
    ),
)


def group(backend: str | None, alt: str | None = None, moving: bool = False,
          changed_at: float | None = None) -> Group:
    return Group(
        site_id=SITE.id, name="g1",
        backend_id=bid(backend) if backend else None,
        alt_backend_id=bid(alt) if alt else None,
        moving="m" if moving else None,
        backend_changed_us=int(changed_at * 1_000_000) if changed_at is not None else None,
    )


# Every case runs on backend A for user "alice" unless the username says otherwise.
CASES = [
    # (username, group, user redirect, group redirect, expected)
    ("alice", group("A", "B"), None, None, Own),
    ("alice", group("A", "B", moving=True), None, None, Own),
    ("alice", group("A", "B", moving=True), "B", None, Refer("B", "user moved")),
    ("alice", group("B", "C"), "B", None, Refer("B", "user moved")),
    ("alice", group("A", "B"), "A", None, Own),
    ("alice", group("B", "C"), None, ("B", NOW - 60), Refer("B", "group moved")),
    ("alice", group("A", "B"), None, ("B", NOW - 60), Refer("B", "group moved")),
    ("alice", group("A", "B", changed_at=NOW - 10), None, ("B", NOW - 60), Own),
    ("alice", group("A", "B", changed_at=NOW - 120), None, ("B", NOW - 60), Refer("B", "group moved")),
    ("alice", group("A", "B"), None, ("B", NOW - STRAGGLER_WINDOW - 1), Own),
    ("alice", group("C", "B"), None, ("B", NOW - STRAGGLER_WINDOW - 1),
     Refer("C", "group is on another backend")),
    ("alice", group("B", "C"), None, None, Refer("B", "group is on another backend")),
    ("alice", group("B", "C"), None, ("", NOW), Refer("B", "group is on another backend")),
    ("alice", group("C", "A", moving=True), None, None, Own),
    ("alice", group("C", "B", moving=True), None, None, Refer("C", "group is on another backend")),
    ("alice", None, None, None, NotMine("user's group is unknown")),
    ("alice", None, None, ("B", NOW - 5), Refer("B", "group moved")),
    ("alice", group(None), None, None, NotMine("group g1 has no backend yet")),
    ("alice", group("X"), None, None, NotMine(f"group g1 is on backend {bid('X')}, unknown in this site")),
    ("probe-A", group("B", "C"), "B", ("B", NOW), Own),
    ("probe-A", None, None, None, Own),
    ("probe-B", group("B", "C"), None, None, Refer("B", "group is on another backend")),
]
IDS = [
    "group-here-owns",
    "moving-source-owns-unmigrated",
    "migrated-user-referred",
    "user-redirect-first",
    "redirect-to-self-ignored",
    "group-moved-recently-referred",
    "stale-group-row-still-referred",
    "group-came-back-after-redirect",
    "group-written-before-redirect",
    "redirect-expired-owns",
    "redirect-expired-follows-geodb",
    "group-elsewhere-referred",
    "empty-redirect-ignored",
    "destination-of-move-owns",
    "moving-elsewhere-referred-to-source",
    "unknown-group-refused",
    "unknown-group-with-redirect",
    "group-without-backend-refused",
    "group-on-unknown-backend-refused",
    "test-user-always-owned",
    "test-user-without-group",
    "other-backends-test-user-not-special",
]


@pytest.mark.parametrize(("username", "grp", "user_redirect", "group_redirect", "expected"), CASES, ids=IDS)
def test_check_ownership(
    username: str,
    grp: Group | None,
    user_redirect: str | None,
    group_redirect: tuple[str, float] | None,
    expected: type[Own] | OwnershipDecision,
) -> None:
    got = check_ownership(
        bid("A"), username, grp, user_redirect, group_redirect, NOW,
        site_view=VIEW, test_username=expand_test_username("probe-%{backend_host}", "A"),
    )
    if isinstance(expected, type):
        assert isinstance(got, expected), got
    else:
        assert got == expected


@pytest.mark.parametrize(
    ("window", "age", "refers"),
    [
        pytest.param(3600, 3599, True, id="inside-hour"),
        pytest.param(3600, 3600, False, id="at-hour"),
        pytest.param(600, 900, False, id="shorter-window"),
        pytest.param(7200, 3700, True, id="longer-window"),
    ],
)
def test_straggler_window(window: float, age: float, refers: bool) -> None:
    got = check_ownership(
        bid("A"), "alice", group("A"), None, ("B", NOW - age), NOW,
        site_view=VIEW, straggler_window=window,
    )
    assert isinstance(got, Refer) is refers


@pytest.mark.parametrize(
    ("template", "host", "expected"),
    [
        pytest.param("probe-%{backend_host}", "be1.example.com", "probe-be1.example.com", id="seed-example"),
        pytest.param("monitor", "be1", "monitor", id="no-variable"),
        pytest.param("%{backend_host}@%{backend_host}", "x", "x@x", id="twice"),
    ],
)
def test_expand_test_username(template: str, host: str, expected: str) -> None:
    assert expand_test_username(template, host) == expected


MOVE_ID = UUID("00000000-0000-0000-0000-0000000000aa")


def view_with_force_move(percentage: int, dest_status: str = "online") -> SiteView:
    move = ForceMove(id=MOVE_ID, percentage=percentage, dest=("B",))
    return SiteView(
        site=SITE,
        backends=(
            Backend(id=bid("A"), site_id=SITE.id, host="A", status="online", force_move=move),
            Backend(id=bid("B"), site_id=SITE.id, host="B", status=dest_status),
            Backend(id=bid("C"), site_id=SITE.id, host="C", status="online"),
        ),
    )


@pytest.mark.parametrize(
    ("me", "percentage", "dest_status", "expected"),
    [
        pytest.param("A", 100, "online", Refer("B", "user force-moved"), id="source-refers-to-dest"),
        pytest.param("B", 100, "online", Own("user force-moved here"), id="dest-owns"),
        pytest.param("C", 100, "online", Refer("A", "group is on another backend"), id="bystander-refers"),
        pytest.param("A", 0, "online", Own("group is on this backend"), id="zero-percent-source-owns"),
        pytest.param(
            "B", 0, "online", Refer("A", "group is on another backend"), id="zero-percent-dest-refers"
        ),
        pytest.param("A", 100, "offline", Own("group is on this backend"), id="dest-offline-source-owns"),
    ],
)
def test_force_move_ownership(
    me: str, percentage: int, dest_status: str, expected: OwnershipDecision
) -> None:
    view = view_with_force_move(percentage, dest_status)
    got = check_ownership(bid(me), "alice", group("A", "C"), None, None, NOW, site_view=view)
    assert got == expected


def test_force_move_ownership_follows_the_bucket() -> None:
    view = view_with_force_move(40)
    for i in range(300):
        user = f"user{i}"
        moved = force_move_bucket(MOVE_ID, user) < 40
        at_source = check_ownership(bid("A"), user, group("A", "C"), None, None, NOW, site_view=view)
        at_dest = check_ownership(bid("B"), user, group("A", "C"), None, None, NOW, site_view=view)
        # Exactly one of the two backends owns each user.
        assert isinstance(at_source, Own) is not moved
        assert isinstance(at_dest, Own) is moved


# --- straggler redirects never override newer GeoDB knowledge ---------------------------------------

ALL_ONLINE = SiteView(
    site=SITE,
    backends=tuple(Backend(id=bid(n), site_id=SITE.id, host=n, status="online") for n in ("A", "B", "C")),
)
HANDED_OVER = NOW - 60
"""When A handed the group over (its redirect's `last_update`)."""


@pytest.mark.parametrize(
    ("grp", "redirect", "expected"),
    [
        pytest.param(group("B", "A", moving=True, changed_at=HANDED_OVER), ("B", HANDED_OVER),
                     Own("destination of the group's running move"), id="move-back-destination-owns"),
        pytest.param(group("B", "A", moving=True, changed_at=HANDED_OVER + 0.7), ("B", HANDED_OVER),
                     Own("destination of the group's running move"), id="move-back-same-second"),
        pytest.param(group("B", "A", moving=True), ("B", HANDED_OVER),
                     Own("destination of the group's running move"), id="move-back-without-write-time"),
        pytest.param(group("C", "A", moving=True, changed_at=NOW - 30), ("B", NOW - 120),
                     Own("destination of the group's running move"), id="a-b-c-a-destination-owns"),
        pytest.param(group("A", "C", changed_at=NOW - 5), ("B", NOW - 120),
                     Own("group is on this backend"), id="a-b-c-a-finished"),
        pytest.param(group("C", "B", changed_at=NOW - 30), ("B", NOW - 120),
                     Refer("C", "group is on another backend"), id="moved-on-referred-to-new-owner"),
        pytest.param(group("B", "C", moving=True, changed_at=HANDED_OVER), ("B", HANDED_OVER),
                     Refer("B", "group is on another backend"), id="moving-on-elsewhere-referred-to-source"),
        pytest.param(group("B", "C", changed_at=HANDED_OVER + 0.5), ("B", HANDED_OVER),
                     Refer("B", "group moved"), id="hand-over-write-in-the-same-second-agrees"),
        pytest.param(group("A", "B", moving=True, changed_at=NOW - 600), ("B", HANDED_OVER),
                     Refer("B", "group moved"), id="row-from-before-the-hand-over-referred"),
        pytest.param(group("C", "A", moving=True, changed_at=NOW - 600), ("B", HANDED_OVER),
                     Refer("B", "group moved"), id="older-move-to-here-referred"),
    ],
)
def test_redirect_yields_to_newer_geodb_rows(grp: Group, redirect: tuple[str, float],
                                             expected: OwnershipDecision) -> None:
    got = check_ownership(bid("A"), "alice", grp, None, redirect, NOW, site_view=ALL_ONLINE)
    assert got == expected


def _route(start: str, grp: Group, user_redirects: dict[str, str], group_redirects: dict[str, tuple[str, float]],
           ) -> list[str]:
    """The backends a login visits from `start`, following referrals as a proxy does (at most
    MAX_REFERRAL_HOPS, never a host twice); the last one owns the user, or the list ends in "LOOP"."""
    from palomar.cluster.routing import MAX_REFERRAL_HOPS

    visited = [start]
    while True:
        host = visited[-1]
        got = check_ownership(bid(host), "alice", grp, user_redirects.get(host), group_redirects.get(host), NOW,
                              site_view=ALL_ONLINE)
        if isinstance(got, Own):
            return visited
        if not isinstance(got, Refer) or got.host in visited or len(visited) > MAX_REFERRAL_HOPS:
            return [*visited, "LOOP"]
        visited.append(got.host)


def _chain_phases(hosts: list[str]):
    """Every state of the moves hosts[0] -> hosts[1] -> ... a migrated user sees, in order: for each
    move, (running with the user migrated, finished). Yields (label, group row, user redirects,
    group redirects, the owner)."""
    group_redirects: dict[str, tuple[str, float]] = {}
    t = NOW - 10 * len(hosts)
    for source, dest in zip(hosts, hosts[1:], strict=False):
        running = group(source, dest, moving=True, changed_at=t - 5)
        yield f"{source}->{dest} running", running, {source: dest}, dict(group_redirects), dest
        group_redirects[source] = (dest, t)
        yield f"{source}->{dest} finished", group(dest, None, changed_at=t), {}, dict(group_redirects), dest
        t += 10


@pytest.mark.parametrize("hosts", [["A", "B", "A"], ["A", "B", "A", "B"], ["A", "B", "C", "A"],
                                   ["A", "B", "C", "A", "C"]], ids="-".join)
def test_move_chains_within_the_hour_never_loop(hosts: list[str]) -> None:
    """Within the straggler window, a migrated user's login from any backend (any stale proxy)
    reaches the owner by referrals, and only the owner owns it."""
    for label, grp, user_redirects, group_redirects, owner in _chain_phases(hosts):
        for start in ("A", "B", "C"):
            path = _route(start, grp, user_redirects, group_redirects)
            assert path[-1] == owner, f"{label}: login from {start} went {path}"
        owners = [h for h in ("A", "B", "C") if isinstance(
            check_ownership(bid(h), "alice", grp, user_redirects.get(h), group_redirects.get(h), NOW,
                            site_view=ALL_ONLINE), Own)]
        assert owners == [owner], label
