"""Backend-side ownership: may this backend serve this user right now?

A proxy decides from data that may be stale (its LocalDB cache, a GeoDB read from
before a move finished). The backend checks again on every login, so a stale proxy
costs one referral instead of a user served by two backends at once. Pure: the
backend service reads the group and its LocalDB rows and passes them in.

Times are Unix seconds (`now`, LocalDB `last_update`); GeoDB write times are
microseconds (`Group.backend_changed_us`), as Cassandra's `writetime()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from palomar.cluster.force_move import apply_force_move
from palomar.cluster.model import Group, GroupSite, SiteView, User
from palomar.cluster.site_selection import NoSite, SiteState, group_of, select_site

STRAGGLER_WINDOW = 3600.0
"""Seconds a source backend keeps referring a moved group's users (Palomar: 1 hour)."""

BACKEND_HOST_VARIABLE = "%{backend_host}"


@dataclass(frozen=True)
class Own:
    """Serve the user here."""

    reason: str


@dataclass(frozen=True)
class Refer:
    """The user lives elsewhere: answer with a referral to `host`."""

    host: str
    reason: str


@dataclass(frozen=True)
class NotMine:
    """Not served here and no better place known: a temporary failure for the proxy."""

    reason: str


OwnershipDecision = Own | Refer | NotMine


def expand_test_username(template: str, backend_host: str) -> str:
    """`cluster_backend_test_username` for one backend (`probe-%{backend_host}` -> `probe-be1`)."""
    return template.replace(BACKEND_HOST_VARIABLE, backend_host)


def _geodb_newer_than_redirect(group: Group | None, redirect_host: str, redirect_time: float,
                               site_view: SiteView) -> bool:
    """True when the GeoDB row says something this backend did not know when it recorded the
    straggler redirect, so the row decides and the redirect is ignored.

    The redirect records "this backend handed the group to `redirect_host` at `redirect_time`";
    that hand-over cleared `moving`. The row is newer when it names another backend written later
    (the group came back, or moved on again), or when the group sits on `redirect_host` with a
    move running (a move that started after the hand-over: e.g. back to this backend, whose users
    the source now refers here). A row on `redirect_host` without a move agrees with the redirect,
    whatever its write time (`last_update` has whole seconds: the hand-over itself may look later).
    """
    if group is None:
        return False
    target = site_view.backend_by_host(redirect_host)
    on_target = target is not None and group.backend_id == target.id
    if on_target:
        return bool(group.moving)
    return group.backend_changed_us is not None and group.backend_changed_us / 1_000_000 > redirect_time


def check_ownership(
    self_backend_id: UUID,
    username: str,
    group: Group | None,
    localdb_user_redirect: str | None,
    localdb_group_redirect: tuple[str, float] | None,
    now: float,
    *,
    site_view: SiteView,
    test_username: str | None = None,
    straggler_window: float = STRAGGLER_WINDOW,
) -> OwnershipDecision:
    """Decide whether this backend owns `username` of `group` (see docs/design/routing.md).

    `localdb_user_redirect` is the user's `redirect_host` recorded while this backend
    migrated the user; `localdb_group_redirect` is the group's (`redirect_host`,
    `last_update`) recorded when a move away finished. `test_username` is the already
    expanded test user of this backend. `site_view` maps backend ids to hosts.
    """
    me = site_view.backend(self_backend_id)
    self_host = me.host if me is not None else None

    if test_username is not None and username == test_username:
        return Own("test user of this backend")

    if localdb_user_redirect and localdb_user_redirect != self_host:
        return Refer(localdb_user_redirect, "user moved")

    if localdb_group_redirect is not None:
        host, last_update = localdb_group_redirect
        recent = now - last_update < straggler_window
        if (
            recent
            and host
            and host != self_host
            and not _geodb_newer_than_redirect(group, host, last_update, site_view)
        ):
            return Refer(host, "group moved")

    if group is None:
        return NotMine("user's group is unknown")
    if group.backend_id == self_backend_id:
        # Our own force-move sends this user elsewhere: refuse stale proxies too, so the
        # user is never served here and at the destination at once.
        dest = apply_force_move(me, username, site_view) if me is not None else None
        if dest is not None:
            return Refer(dest.host, "user force-moved")
        return Own("group is on this backend")
    if group.moving and group.alt_backend_id == self_backend_id:
        # Referrals from the source land here while it migrates the group.
        return Own("destination of the group's running move")
    if group.backend_id is None:
        return NotMine(f"group {group.name} has no backend yet")
    owner = site_view.backend(group.backend_id)
    if owner is None:
        return NotMine(f"group {group.name} is on backend {group.backend_id}, unknown in this site")
    forced = apply_force_move(owner, username, site_view)
    if forced is not None and forced.id == self_backend_id:
        return Own("user force-moved here")
    return Refer(owner.host, "group is on another backend")


def site_group(
    username: str, user: User | None, group_site: GroupSite | None, state: SiteState, *, group_count: int,
    test_username: str | None = None,
) -> str | NotMine:
    """The group this backend's site serves the user in, or NotMine if the user's site is elsewhere.

    The backend's half of site selection: the same `select_site` the proxy runs, with the
    backend's site as the local site, so a proxy with an old view (or one that thinks a user
    without a home belongs to it) cannot make two sites serve the user. The test user is this
    backend's own (the proxies' probes must reach it whatever the sites say).
    """
    home_group = group_of(username, user, group_count)
    if test_username is not None and username == test_username:
        return home_group
    choice = select_site(username, user, home_group, group_site, state)
    if isinstance(choice, NoSite):
        return NotMine(choice.reason)
    if choice.site.id != state.local_site_id:
        why = f": {choice.reason}" if choice.reason else ""
        return NotMine(f"user is served in site {choice.site.name} ({choice.via}{why})")
    return choice.group_name
