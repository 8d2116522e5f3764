"""Which LocalDB `cluster_users` rows a backend may forget (pure; the pruner is in
`backend/localdb_upkeep.py`, see docs/design/periodic-tasks.md).

A row without a redirect says "this user was served here, in this group": a group move reads
these rows to know whom to migrate, which only matters for users with sessions here. A row
with a redirect is move state: "refer this user to that host". The table gains a row per
distinct user ever served, so without pruning it grows with the whole user base.
"""

from __future__ import annotations

from enum import Enum

from palomar.cluster.ownership import STRAGGLER_WINDOW

USER_ROW_RETENTION = 86_400
"""Seconds a `cluster_users` row is kept after its last write. It is also what
`user_count_approx` counts: the users served here within this window. At least the straggler
window, so a per-user redirect never outlives the group redirect that explains it."""
assert USER_ROW_RETENTION >= STRAGGLER_WINDOW


class Fate(Enum):
    KEEP = "keep"
    """Newer than the retention: not a candidate."""
    TOUCH = "touch"
    """Old, but still needed: write `last_update = now` and look again after another retention."""
    DROP = "drop"


def user_row_fate(last_update: int, now: int, *, redirected: bool, live: bool, group_has_move_state: bool,
                  retention: int = USER_ROW_RETENTION) -> Fate:
    """The fate of one `cluster_users` row.

    `live`: the user has relayed sessions, a login on its way or an open LMTP transaction here —
    a group move must find its row to migrate it, and "served now" is a fresh `last_update`.
    `group_has_move_state`: a move of the row's group runs or finishes here, or the LocalDB keeps
    the group's move marker or straggler redirect: its per-user redirects are still read.
    """
    if now - last_update < retention:
        return Fate.KEEP
    if live or (redirected and group_has_move_state):
        return Fate.TOUCH
    return Fate.DROP
