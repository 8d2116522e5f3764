"""Proxy-side routing rules: user -> group -> backend, as pure functions.

The proxy reads the user row, the group row and the site's backends, calls
`route_user`, performs the writes the decision asks for, and connects. Nothing here
reads a clock or a database, so each rule is tested from a table and every proxy
reaches the same answer from the same data without coordinating with the others.
See docs/design/routing.md for the rules and their reasons.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from uuid import UUID

from palomar.cluster.director_transition import DirectorTransition, director_group_name, director_placement
from palomar.cluster.force_move import apply_force_move, rendezvous_backend
from palomar.cluster.hashing import default_group_name
from palomar.cluster.model import Backend, Group, SiteView, User
from palomar.cluster.ownership import (
    STRAGGLER_WINDOW,
    NotMine,
    Own,
    OwnershipDecision,
    Refer,
    check_ownership,
    expand_test_username,
)

__all__ = [
    "MAX_REFERRAL_HOPS",
    "STRAGGLER_WINDOW",
    "Assign",
    "Failover",
    "FollowReferral",
    "GroupDecision",
    "GroupWrite",
    "NotMine",
    "Own",
    "OwnershipDecision",
    "Refer",
    "RouteDecision",
    "Routed",
    "Serve",
    "Unavailable",
    "apply_force_move",
    "check_ownership",
    "choose_backend",
    "expand_test_username",
    "follow_referral",
    "group_of",
    "group_write_for",
    "new_user_group",
    "pinned_backend",
    "resolve_group",
    "route_user",
]

MAX_REFERRAL_HOPS = 3
"""Referrals a proxy follows for one login before giving up (a chain longer than a move needs)."""


# --- decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Serve:
    """The group stays where it is; connect to `backend`."""

    backend: Backend


@dataclass(frozen=True)
class Assign:
    """The group has no backend yet: write these (only if still unset) and connect to `backend`."""

    backend: Backend
    alt_backend: Backend | None


@dataclass(frozen=True)
class Failover:
    """The group's backend cannot serve: rewrite the group (only if still on `moved_from`).

    `finishes_move` is set when the group was moving and this rewrite ends the move.
    """

    new_backend: Backend
    new_alt: Backend | None
    moved_from: UUID | None
    finishes_move: bool = False


@dataclass(frozen=True)
class Unavailable:
    """No backend can take the user now: a temporary failure, never an authentication failure."""

    reason: str


GroupDecision = Serve | Assign | Failover | Unavailable


@dataclass(frozen=True)
class GroupWrite:
    """A conditional group update: apply `group` only if the stored backend_id is `expect_backend_id`.

    Done as a lightweight transaction (Cassandra `IF`, SQLite `WHERE`), so when several
    proxies race, exactly one write lands and the others re-read and converge on it.
    """

    group: Group
    expect_backend_id: UUID | None


@dataclass(frozen=True)
class Routed:
    """Where this login goes, and what the proxy must write before connecting."""

    backend: Backend
    group_name: str | None
    via: str
    """`group`, `force-move` or `passdb-host`."""
    group_decision: GroupDecision | None = None
    user_write: User | None = None
    group_write: GroupWrite | None = None


RouteDecision = Routed | Unavailable


@dataclass(frozen=True)
class FollowReferral:
    """Follow the referral: connect to `host`; `hops` referrals followed after this one."""

    host: str
    hops: int


# --- backend choice ----------------------------------------------------------------------


def choose_backend(
    group_name: str, site_view: SiteView, exclude: frozenset[UUID] = frozenset()
) -> Backend | None:
    """The online backend a group should live on, the same on every proxy.

    Backends with load factor 0 are draining and get no new groups, unless every
    online backend is at 0 (then serving beats refusing).
    """
    online = [b for b in site_view.backends if b.online and b.id not in exclude]
    return rendezvous_backend(group_name, online)


def _usable_alt(group: Group, site_view: SiteView, failed: UUID | None) -> Backend | None:
    """The group's pre-agreed alternative, if it can take the group."""
    alt = site_view.backend(group.alt_backend_id)
    if alt is None or not alt.online or alt.id == failed:
        return None
    if alt.load_factor <= 0 and any(
        b.online and b.load_factor > 0 and b.id != failed for b in site_view.backends
    ):
        return None
    return alt


def _failover(
    group: Group, group_name: str, site_view: SiteView, *, finishes_move: bool
) -> Failover | Unavailable:
    failed = group.backend_id
    new = _usable_alt(group, site_view, failed)
    if new is None:
        new = choose_backend(group_name, site_view, frozenset({failed} if failed else ()))
    if new is None:
        return Unavailable(f"no online backend for group {group_name}")
    new_alt = choose_backend(group_name, site_view, frozenset({new.id} | ({failed} if failed else set())))
    return Failover(new, new_alt, failed, finishes_move)


def resolve_group(
    group: Group | None, group_name: str, site_view: SiteView, first: Backend | None = None
) -> GroupDecision:
    """Which backend serves the group now, and whether the group row must change.

    `first` places a group that has no backend yet (the director transition's choice);
    without it the group goes where `choose_backend` says.
    """
    if group is None or group.backend_id is None:
        backend = first or choose_backend(group_name, site_view)
        if backend is None:
            return Unavailable(f"no online backend for group {group_name}")
        return Assign(backend, choose_backend(group_name, site_view, frozenset({backend.id})))

    current = site_view.backend(group.backend_id)
    if current is not None and current.online:
        # A moving group is still served by its source: the source migrates the users
        # and refers those already moved.
        return Serve(current)

    if group.moving:
        # Source offline/standby: the move finishes at once to its destination.
        dest = site_view.backend(group.alt_backend_id)
        if dest is not None and dest.online and dest.id != group.backend_id:
            exclude = frozenset({dest.id, group.backend_id})
            return Failover(dest, choose_backend(group_name, site_view, exclude), group.backend_id, True)
        return _failover(group, group_name, site_view, finishes_move=True)
    return _failover(group, group_name, site_view, finishes_move=False)


def group_write_for(
    decision: GroupDecision, group: Group | None, group_name: str, site_id: UUID, now: float
) -> GroupWrite | None:
    """The conditional group update a decision asks for (None for Serve/Unavailable)."""
    base = group if group is not None else Group(site_id=site_id, name=group_name)
    written_us = int(now * 1_000_000)
    if isinstance(decision, Assign):
        alt_id = decision.alt_backend.id if decision.alt_backend else None
        new = replace(
            base, backend_id=decision.backend.id, alt_backend_id=alt_id, moving=None,
            backend_changed_us=written_us,
        )
        return GroupWrite(new, expect_backend_id=None)
    if isinstance(decision, Failover):
        alt_id = decision.new_alt.id if decision.new_alt else None
        new = replace(
            base, backend_id=decision.new_backend.id, alt_backend_id=alt_id, moving=None,
            backend_changed_us=written_us,
        )
        return GroupWrite(new, expect_backend_id=decision.moved_from)
    return None


# --- per-user overrides --------------------------------------------------------------------


def pinned_backend(passdb_host: str | None, site_view: SiteView) -> Backend | None:
    """The backend a passdb `host=` field pins the user to, if it is a known online backend here."""
    if not passdb_host:
        return None
    backend = site_view.backend_by_host(passdb_host)
    return backend if backend is not None and backend.online else None


# --- orchestration -------------------------------------------------------------------------


def _decided_backend(decision: Serve | Assign | Failover) -> Backend:
    return decision.new_backend if isinstance(decision, Failover) else decision.backend


def new_user_group(
    username: str, group_count: int, site_view: SiteView | None = None, director: DirectorTransition | None = None
) -> tuple[str, Backend | None]:
    """The group a user without one joins, and the backend that group starts on if it is new.

    With a director transition whose backend for the user can take a new group here, that is
    `director-<backend>-N` on the director's backend; otherwise `default-N`, placed by rendezvous.
    """
    placed = director_placement(username, site_view, director) if site_view is not None else None
    if placed is not None:
        return director_group_name(placed.host, username, group_count), placed
    return default_group_name(username, group_count), None


def group_of(
    username: str,
    user: User | None,
    group_count: int,
    site_view: SiteView | None = None,
    director: DirectorTransition | None = None,
) -> str:
    """The user's group: the one in its row, or the one a new user joins."""
    if user is not None and user.group_name:
        return user.group_name
    return new_user_group(username, group_count, site_view, director)[0]


def route_user(
    username: str,
    user: User | None,
    groups: Mapping[str, Group],
    site_view: SiteView,
    *,
    group_count: int,
    now: float,
    passdb_host: str | None = None,
    director: DirectorTransition | None = None,
) -> RouteDecision:
    """Route one login of `username` within `site_view` (the user's site, already chosen).

    `groups` holds the group rows the proxy read (by name; a missing name means no
    row). `now` is Unix seconds and stamps the writes. The proxy performs
    `user_write` and `group_write`, re-reading and re-routing if the conditional
    group write loses a race. `director` (cluster_director_transition_config) places
    users without a group where the Dovecot director had them.
    """
    pinned = pinned_backend(passdb_host, site_view)
    if pinned is not None:
        return Routed(pinned, None, "passdb-host")

    user_write: User | None = None
    first: Backend | None = None
    if user is not None and user.group_name:
        group_name = user.group_name
    else:
        group_name, first = new_user_group(username, group_count, site_view, director)
        user_write = replace(user, group_name=group_name) if user else User(username, group_name)

    group = groups.get(group_name)
    decision = resolve_group(group, group_name, site_view, first)
    if isinstance(decision, Unavailable):
        return decision
    backend = _decided_backend(decision)

    group_write = group_write_for(decision, group, group_name, site_view.site.id, now)
    forced = apply_force_move(backend, username, site_view)
    return Routed(
        forced or backend,
        group_name,
        "force-move" if forced else "group",
        decision,
        user_write,
        group_write,
    )


def follow_referral(
    current_hops: int, max_hops: int, referred_host: str, visited: Iterable[str]
) -> FollowReferral | Unavailable:
    """Whether to follow a backend's referral to `referred_host`.

    `visited` holds every host this login already tried, `current_hops` the referrals
    already followed. A host seen twice or a chain past `max_hops` is a loop: stale
    data on some backend, answered as a temporary failure so the client retries.
    """
    if not referred_host:
        return Unavailable("empty referral")
    if referred_host in set(visited):
        return Unavailable("referral loop")
    if current_hops >= max_hops:
        return Unavailable("referral loop")
    return FollowReferral(referred_host, current_hops + 1)
