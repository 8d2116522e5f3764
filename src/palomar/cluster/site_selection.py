"""Site selection: which site serves a user now, as one pure function.

Every server that decides about a user calls `select_site` with its own site as
`SiteState.local_site_id`: the proxy (where to send a login or an LMTP recipient),
the backend (whether a user it is asked to serve belongs to its site at all) and
`cluster user access`. Sites agree because the inputs are GeoDB rows every site
reads alike; the only per-site input is reachability, which is by nature what the
deciding site can see (a partition is exactly when two sites see different things).
See docs/design/routing.md, "Site selection", for the table this implements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from palomar.cluster.hashing import default_group_name, force_move_bucket, weighted_rendezvous
from palomar.cluster.model import GroupSite, Site, User

MAX_SITE_HOPS = 2
"""Proxy-to-proxy hops one login may take between sites (home, then at most one more referral)."""

GROUP_SITE_FOLLOW = 0
"""`group_sites.status`: the group follows its site (the default, also for a missing row)."""
GROUP_SITE_FAILOVER = 1
"""`group_sites.status`: the group's users are served in its failover site, whatever the site's status."""
GROUP_SITE_STATUSES = {"follow": GROUP_SITE_FOLLOW, "failover": GROUP_SITE_FAILOVER}


@dataclass(frozen=True)
class SiteState:
    """What site selection reads: every site, and which sites the deciding site cannot reach."""

    local_site_id: UUID
    sites: tuple[Site, ...]
    unreachable: frozenset[UUID] = frozenset()
    """Destination sites whose `site_reachability(local, dest)` row says unreachable."""

    def site(self, site_id: UUID | None) -> Site | None:
        return next((s for s in self.sites if s.id == site_id), None)

    @property
    def local(self) -> Site | None:
        return self.site(self.local_site_id)

    def reachable(self, site: Site) -> bool:
        """The local site always reaches itself; others unless their reachability row says no."""
        return site.id == self.local_site_id or site.id not in self.unreachable

    def usable(self, site: Site) -> bool:
        """Online and reachable from here: a site a user can be sent to."""
        return site.status == "online" and self.reachable(site)


@dataclass(frozen=True)
class SiteChoice:
    """Serve the user in `site`, in its group `group_name` there.

    `via`: `home`, `force-move`, `failover` or `evacuating` (an evacuating home site with
    nowhere to go). `new_home` is set for a user without a preferred site: the proxy records
    it as the user's `preferred_site_id` (the site of the first login).
    """

    site: Site
    group_name: str
    via: str
    home: Site
    reason: str = ""
    new_home: UUID | None = None


@dataclass(frozen=True)
class NoSite:
    """No site can serve the user now: a temporary failure."""

    reason: str


SiteDecision = SiteChoice | NoSite


def group_of(username: str, user: User | None, group_count: int) -> str:
    """The user's home group: the one in its row, or the `default-N` a new user joins."""
    if user is not None and user.group_name:
        return user.group_name
    return default_group_name(username, group_count)


def home_site(user: User | None, state: SiteState) -> tuple[Site | None, bool]:
    """The user's home: its preferred site, else (new, or the site was removed) the local site.

    The bool says the home is new and must be written (`preferred_site_id`).
    """
    if user is not None and user.preferred_site_id is not None:
        site = state.site(user.preferred_site_id)
        if site is not None:
            return site, False
    return state.local, True


def failover_group(user: User | None, home_group: str) -> str:
    """The user's group outside its home site: `failover_site_group_name`, else the home group's name."""
    if user is not None and user.failover_site_group_name:
        return user.failover_site_group_name
    return home_group


def failover_site(home: Site, home_group: str, group_site: GroupSite | None, state: SiteState) -> Site | None:
    """Where the users of `home_group` go when they cannot be served at `home`.

    `group_sites.failover_site_id` if it names a usable site; else rendezvous over the usable
    sites keyed by the group name, so every site picks the same one (while they see the same
    reachability) and a group's users fail over together.
    """
    if group_site is not None and group_site.failover_site_id not in (None, home.id):
        named = state.site(group_site.failover_site_id)
        if named is not None and state.usable(named):
            return named
    candidates = [s for s in state.sites if s.id != home.id and state.usable(s)]
    winner = weighted_rendezvous(home_group, [(str(s.id), 1.0) for s in candidates])
    return next((s for s in candidates if str(s.id) == winner), None)


def _force_move_destination(home: Site, username: str, state: SiteState) -> Site | None:
    """The site a running force-move sends the user to, or None. A running `site recover` wins:
    it exists to bring the force-moved users home in steps, so a user it has brought home (the
    others never get here) is not moved out again by the force-move it is undoing."""
    move = home.force_move
    recovering = home.recover_id is not None and home.recover_percentage is not None
    if move is None or recovering or force_move_bucket(move.id, username) >= move.percentage:
        return None
    dests = [state.site(_as_uuid(d)) for d in move.dest]
    usable = [d for d in dests if d is not None and d.id != home.id and state.usable(d)]
    winner = weighted_rendezvous(username, [(str(d.id), 1.0) for d in usable])
    return next((d for d in usable if str(d.id) == winner), None)


def _as_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None


def _leave_home_reason(home: Site, username: str, group_site: GroupSite | None, state: SiteState) -> str | None:
    """Why the user cannot be served at home now, or None when it can."""
    if home.status != "online":
        return f"site {home.name} is {home.status}"
    if not state.reachable(home):
        return f"site {home.name} is unreachable"
    if group_site is not None and group_site.status == GROUP_SITE_FAILOVER:
        return f"group {group_site.group_name} is failed over"
    if home.recover_id is not None and home.recover_percentage is not None and (
        force_move_bucket(home.recover_id, username) >= home.recover_percentage
    ):
        return f"site {home.name} is recovering ({home.recover_percentage}%)"
    return None


def select_site(
    username: str, user: User | None, home_group: str, group_site: GroupSite | None, state: SiteState
) -> SiteDecision:
    """Which site serves `username` now (see docs/design/routing.md, "Site selection").

    `home_group` is the user's group in its home site (`group_of`); `group_site` is the
    `group_sites` row of that group in the home site, if any.
    """
    home, new = home_site(user, state)
    if home is None:
        return NoSite("the local site is not in the GeoDB")
    new_home = home.id if new else None
    away = failover_group(user, home_group)
    reason = _leave_home_reason(home, username, group_site, state)
    if reason is None:
        dest = _force_move_destination(home, username, state)
        if dest is not None:
            return SiteChoice(dest, away, "force-move", home, f"site {home.name} force-moves the user", new_home)
        return SiteChoice(home, home_group, "home", home, "", new_home)
    target = failover_site(home, home_group, group_site, state)
    if target is not None:
        return SiteChoice(target, away, "failover", home, reason, new_home)
    if home.status == "evacuate" and state.reachable(home):
        return SiteChoice(home, home_group, "evacuating", home, f"{reason}, no failover site", new_home)
    return NoSite(f"{reason} and no failover site is usable")


def follow_site(visited: Sequence[UUID], target: UUID, max_hops: int = MAX_SITE_HOPS) -> str | None:
    """Whether a login that has passed through the sites `visited` (in order, the deciding site
    last) may be relayed on to `target`; None if it may, else why not.

    Never back to a site it came through (two sites that disagree would bounce it forever) and
    never more than `max_hops` relays: the login then fails temporarily and the client retries
    once the sites' caches agree again.
    """
    if target in visited:
        return "site loop: the login already passed through the site it would be relayed to"
    if len(visited) > max_hops:
        return f"site loop: more than {max_hops} relays between sites"
    return None
