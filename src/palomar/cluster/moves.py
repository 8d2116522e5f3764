"""Move rules as pure functions: group moves, user moves, evacuation, force-move selection.

The backend's move executor (`palomar.backend.moves`) reads the GeoDB and its LocalDB, asks
these functions what to do, and performs the writes and kicks. Nothing here reads a clock
or a database, so every rule is a table test and a restarted executor reaches the same
decisions from the same stored state. See docs/design/moves.md.

Times are Unix seconds (`now`, LocalDB `last_update`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from palomar.cluster.hashing import force_move_bucket
from palomar.cluster.model import Backend, Group, SiteView, User
from palomar.cluster.ownership import STRAGGLER_WINDOW
from palomar.cluster.routing import Failover, GroupWrite, choose_backend, group_write_for, resolve_group

DEFAULT_USER_MOVE_TIMEOUT = 31.0
"""`cluster_user_move_timeout` default: after this a user counts as moved even if not confirmed."""


# --- group move request: what `cluster group move` (and the controller) writes -----------------


GroupMoveRequest = Literal["assign", "start", "already-requested", "already-there", "busy"]


def group_move_request(group: Group, target_id: UUID, *, direct: bool = False) -> GroupMoveRequest:
    """How a request to move `group` to `target_id` is carried out.

    `assign`: write the backend at once (a group nobody owns yet, or `--direct`); `start`: mark the
    group moving to the target (`alt_backend_id` + a new `moving` ID; the source migrates it on
    its next access); the other answers write nothing: the same move is already requested, the
    group is already there, or it is moving elsewhere.
    """
    if direct or group.backend_id is None:
        return "assign"
    if group.backend_id == target_id:
        return "already-there"
    if group.moving:
        return "already-requested" if group.alt_backend_id == target_id else "busy"
    return "start"


# --- group move: what an access of a moving group means on this backend -------------------


@dataclass(frozen=True)
class NoMove:
    """Nothing to do here: the group is not moving, or this backend is not its source."""

    reason: str


@dataclass(frozen=True)
class Migrate:
    """This backend is the source of a running move: migrate its users to `dest`, one by one."""

    dest: Backend
    move_id: str


@dataclass(frozen=True)
class WaitForDest:
    """The destination cannot take users now; keep serving the group here and try again later."""

    reason: str


@dataclass(frozen=True)
class FinishAtOnce:
    """The source is offline/standby (or the target vanished): rewrite the group without migrating."""

    write: GroupWrite
    dest: Backend
    reason: str


GroupMoveAction = NoMove | Migrate | WaitForDest | FinishAtOnce


def group_move_action(group: Group | None, self_backend_id: UUID, site_view: SiteView) -> GroupMoveAction:
    """What an access of `group` asks this backend to do about a move (see docs/design/moves.md).

    Only the source (the group's `backend_id`) acts; it migrates while it is online. An
    offline or standby source finishes the move at once, as every proxy would (routing's
    `resolve_group`), so the two write the same row and the conditional write lets one win.
    """
    if group is None or not group.moving:
        return NoMove("group is not moving")
    if group.backend_id != self_backend_id:
        return NoMove("this backend is not the group's source")
    me = site_view.backend(self_backend_id)
    if me is None:
        return WaitForDest("this backend is not in the site")
    if not me.online:
        decision = resolve_group(group, group.name, site_view)
        if not isinstance(decision, Failover):
            return WaitForDest("no online backend to finish the move on")
        write = group_write_for(decision, group, group.name, group.site_id, 0.0)
        assert write is not None
        return FinishAtOnce(write, decision.new_backend, f"source is {me.status}")
    dest = site_view.backend(group.alt_backend_id)
    if dest is None or dest.id == self_backend_id:
        # An unusable target (unknown, or this backend): abandon the move, keep the group here.
        stay = Group(site_id=group.site_id, name=group.name, backend_id=self_backend_id,
                     alt_backend_id=_new_alt(group.name, site_view, self_backend_id),
                     sticky_users=group.sticky_users, sticky_backend=group.sticky_backend,
                     refresh_after=group.refresh_after)
        return FinishAtOnce(GroupWrite(stay, self_backend_id), me, "move target is unusable; move abandoned")
    if not dest.online:
        return WaitForDest(f"destination {dest.host} is {dest.status}")
    return Migrate(dest, group.moving)


def _new_alt(group_name: str, site_view: SiteView, backend_id: UUID) -> UUID | None:
    alt = choose_backend(group_name, site_view, frozenset({backend_id}))
    return alt.id if alt is not None else None


# --- the per-user plan ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalUserState:
    """What the source's LocalDB says about one user of the moving group."""

    username: str
    redirect_host: str | None


def pending_users(
    users: Iterable[LocalUserState], dest_host: str, *, exclude: Iterable[str] = ()
) -> list[str]:
    """Users of the group still to migrate, in a stable order.

    A user is done when its `redirect_host` is the destination. A row redirecting somewhere
    else belongs to an earlier move (the group came back) and is migrated again. Users
    that log in during the move get a fresh row and join the plan, so the move cannot
    finish while one of them is still served here. `exclude` skips the test user.
    """
    skip = set(exclude)
    return sorted(u.username for u in users if u.redirect_host != dest_host and u.username not in skip)


def user_move_expired(started: float, now: float, timeout: float) -> bool:
    """True when a user's move ran past `cluster_user_move_timeout`: it counts as moved anyway.

    A user whose sessions do not go away (a hung process, doveadm unreachable) must not
    stall the group: Palomar treats it as moved and refers its next login.
    """
    return now - started >= timeout


# --- finishing a group move ----------------------------------------------------------------


@dataclass(frozen=True)
class GroupMoveCompletion:
    """The GeoDB writes that end a move: the group row (conditional) and the backends' history."""

    write: GroupWrite
    source_host: str
    dest_host: str


def group_move_completion(group: Group, dest: Backend, site_view: SiteView,
                          source: Backend) -> GroupMoveCompletion:
    """`backend_id` = destination, a new alt (rendezvous, excluding the destination), `moving`
    cleared; applied only if the group is still on the source (a proxy may have finished the
    move first because the source turned standby)."""
    new = Group(site_id=group.site_id, name=group.name, backend_id=dest.id,
                alt_backend_id=_new_alt(group.name, site_view, dest.id), moving=None,
                sticky_users=group.sticky_users, sticky_backend=group.sticky_backend,
                refresh_after=group.refresh_after)
    return GroupMoveCompletion(GroupWrite(new, expect_backend_id=source.id), source.host, dest.host)


def straggler_active(redirect_last_update: float, now: float, window: float = STRAGGLER_WINDOW) -> bool:
    """Whether the source still refers a moved group's stale proxies (Palomar: for one hour)."""
    return now - redirect_last_update < window


# --- user move ------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserMoveWrite:
    """The user row after a pending user move took effect (`moving_*` cleared)."""

    group_name: str
    preferred_site_id: UUID | None
    failover_site_group_name: str | None

    def fields(self) -> dict[str, object]:
        return {
            "group_name": self.group_name,
            "preferred_site_id": self.preferred_site_id,
            "failover_site_group_name": self.failover_site_group_name,
            "moving_group_name": None,
            "moving_preferred_site_id": None,
            "moving_failover_site_group_name": None,
        }


def user_move_effective(user: User | None) -> UserMoveWrite | None:
    """The new placement if `user` has a pending move, else None.

    A pending move without a new group keeps the current group (only the site changes);
    a missing site or failover group keeps the current one.
    """
    if user is None or not user.moving:
        return None
    group = user.moving_group_name or user.group_name
    if not group:
        return None
    return UserMoveWrite(
        group_name=group,
        preferred_site_id=user.moving_preferred_site_id or user.preferred_site_id,
        failover_site_group_name=user.moving_failover_site_group_name or user.failover_site_group_name,
    )


# --- evacuation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EvacuationPlan:
    """Where each group of an evacuated backend goes; `stuck` lists groups with no destination."""

    moves: tuple[tuple[str, Backend], ...]
    stuck: tuple[str, ...]


def evacuation_plan(backend_id: UUID, groups: Sequence[Group], site_view: SiteView) -> EvacuationPlan:
    """Every group on `backend_id` to another online backend of the site, spread by load factor.

    The destination is `choose_backend` (weighted rendezvous) without the evacuated backend:
    the same winner every proxy would pick for the group if the backend vanished, and
    a share per backend that follows the load factors. A group already moving to another
    online backend keeps its destination.
    """
    moves: list[tuple[str, Backend]] = []
    stuck: list[str] = []
    exclude = frozenset({backend_id})
    for group in sorted(groups, key=lambda g: g.name):
        if group.backend_id != backend_id:
            continue
        current = site_view.backend(group.alt_backend_id) if group.moving else None
        if current is not None and current.online and current.id != backend_id:
            moves.append((group.name, current))
            continue
        dest = choose_backend(group.name, site_view, exclude)
        if dest is None:
            stuck.append(group.name)
        else:
            moves.append((group.name, dest))
    return EvacuationPlan(tuple(moves), tuple(stuck))


# --- force-move -----------------------------------------------------------------------------


def force_move_selected(move_id: UUID, usernames: Iterable[str], percentage: int) -> set[str]:
    """The users a backend force-move with this id and percentage sends away.

    Force-move acts on logins, not on groups: the group stays on its backend and only
    these users' sessions go to a destination (the ownership check refers them there).
    The same id keeps every earlier user when the percentage is raised; a backend status
    change clears the force-move (in the repository), so they come back on next login.
    """
    return {u for u in usernames if force_move_bucket(move_id, u) < percentage}
