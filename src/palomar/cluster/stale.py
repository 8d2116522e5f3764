"""What a process may do with cached cluster state while the GeoDB cannot answer.

The rule of docs/design/geodb-outage.md, as pure functions over plain values:

- Nothing is *written* from stale state: new group placements, failovers and moves wait for the
  GeoDB (the caller gets `GeoDBUnavailable` and answers a temporary failure).
- A cached entry may stand in for a GeoDB read while it is younger than `max_stale` and was
  fetched after the moment this process last lost continuity (`trusted_since`: its start, or
  the end of a stall), because a change the process may have missed while it was down or frozen
  is exactly what would let two backends serve one user.
- A backend serves a user from stale state only if nothing it knows says the user's group is
  moving or moved away: the group is not `moving`, no move of this backend is running for it,
  and this backend was online in its own last view. Referrals it knows locally (LocalDB) still
  apply: they only ever send a user away.

Times are Unix seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from palomar.cluster.model import Group
from palomar.cluster.ownership import NotMine, Own, OwnershipDecision


@dataclass(frozen=True)
class CachedEntry:
    """A LocalDB cache row as the stale rule sees it: its text and when it was fetched."""

    text: str
    fetched_at: float


def usable_when_stale(entry: CachedEntry | None, now: float, *, max_stale: float,
                      trusted_since: float = 0.0) -> bool:
    """May `entry` stand in for a GeoDB read that failed?"""
    if entry is None or max_stale <= 0:
        return False
    if entry.fetched_at < trusted_since:
        return False
    return now - entry.fetched_at <= max_stale


def ownership_when_stale(decision: OwnershipDecision, group: Group | None, *, self_online: bool,
                         moving_here: bool, test_user: bool = False) -> OwnershipDecision:
    """Narrow a backend's ownership decision made from stale state: only refer or refuse, unless
    serving cannot race a move or failover this backend knows about. The backend's own test
    user is always served (probes must tell a live backend from a dead one)."""
    if not isinstance(decision, Own) or test_user:
        return decision
    if group is not None and group.moving:
        return NotMine(f"group {group.name} is moving and the GeoDB is unavailable")
    if moving_here:
        return NotMine("a move of this group is running here and the GeoDB is unavailable")
    if not self_online:
        return NotMine("this backend was not online in its last view and the GeoDB is unavailable")
    return Own(f"{decision.reason} (cached: GeoDB unavailable)")
