"""Which LocalDB `cluster_users` rows a backend may forget (cluster.retention)."""

from __future__ import annotations

import pytest

from palomar.cluster.retention import USER_ROW_RETENTION, Fate, user_row_fate

NOW = 10_000_000
OLD = NOW - USER_ROW_RETENTION
RECENT = OLD + 1


@pytest.mark.parametrize(
    ("last_update", "redirected", "live", "move_state", "fate"),
    [
        (RECENT, False, False, False, Fate.KEEP),   # served within the retention
        (RECENT, True, False, False, Fate.KEEP),
        (OLD, False, False, False, Fate.DROP),      # nobody served for a day: forget
        (OLD, False, False, True, Fate.DROP),       # a running move would only migrate a user with nothing to close
        (OLD, False, True, False, Fate.TOUCH),      # an IDLE session of days: a move must find the user
        (OLD, True, False, True, Fate.TOUCH),       # a redirect its group's move or straggler window still reads
        (OLD, True, False, False, Fate.DROP),       # a redirect left behind by a move long over
        (OLD, True, True, False, Fate.TOUCH),
    ],
)
def test_user_row_fate(last_update: int, redirected: bool, live: bool, move_state: bool, fate: Fate) -> None:
    assert user_row_fate(last_update, NOW, redirected=redirected, live=live, group_has_move_state=move_state) is fate
