"""Forgetting LocalDB rows the backend no longer needs, in bounded batches on the event loop.

Each pass reads at most `PRUNE_BATCH` `cluster_users` rows through the `last_update` index and
deletes (or touches) them in one transaction, and purges at most `PRUNE_BATCH` expired
`cluster_geodb_cache` rows: a pass costs the batch, never the table. A full batch means more
is waiting: the next pass follows after `PRUNE_PAUSE`, so a large backlog (a LocalDB from a
day of a million logins) drains over minutes without holding the loop. Which rows may go is
the pure rule `cluster.retention.user_row_fate`; see docs/design/periodic-tasks.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from palomar.cluster.retention import USER_ROW_RETENTION, Fate, user_row_fate

if TYPE_CHECKING:
    from palomar.backend.service import BackendState

log = logging.getLogger("palomar.backend.localdb")

PRUNE_INTERVAL = 60.0
"""Seconds between passes while nothing is waiting."""
PRUNE_PAUSE = 0.5
"""Seconds between passes while a backlog drains (a full batch)."""
PRUNE_BATCH = 500
"""Rows per table per pass: a few milliseconds of SQLite work on the loop."""


@dataclass(frozen=True)
class PruneResult:
    dropped: int
    touched: int
    cache_purged: int
    full: bool
    """A batch was full: more rows may be waiting."""


def prune_once(state: BackendState, now: int, *, batch: int = PRUNE_BATCH,
               retention: int = USER_ROW_RETENTION) -> PruneResult:
    """One bounded pass (synchronous: no other task runs between reading a row's liveness and
    deleting it, so a login that records its user meanwhile is not lost)."""
    localdb = state.localdb
    rows = localdb.users_not_updated_since(now - retention, batch)
    moves = state.moves
    held = moves.held_users() if moves is not None else set()
    move_state: dict[str, bool] = {}

    def group_has_move_state(group: str) -> bool:
        if group not in move_state:
            move_state[group] = (moves is not None and (group in moves.running or group in moves.finishing)) or (
                localdb.group_get(group) is not None)
        return move_state[group]

    drop, touch = [], []
    for row in rows:
        fate = user_row_fate(row.last_update, now, redirected=row.redirect_host is not None,
                             live=row.username in state.by_user or row.username in held,
                             group_has_move_state=group_has_move_state(row.group))
        if fate is Fate.DROP:
            drop.append((row.group, row.username))
        elif fate is Fate.TOUCH:
            touch.append((row.group, row.username))
    localdb.users_remove(drop)
    localdb.users_touch(touch, now)
    purged = localdb.cache_purge(now, limit=batch)
    return PruneResult(len(drop), len(touch), purged, full=len(rows) >= batch or purged >= batch)


async def prune_loop(state: BackendState, *, interval: float = PRUNE_INTERVAL, pause: float = PRUNE_PAUSE,
                     batch: int = PRUNE_BATCH) -> None:
    """Prune forever: every `interval`, or every `pause` while a backlog drains. Wall time, as the
    rows' `last_update` of logins and the cache's expiry are written (not the moves' test clock)."""
    while True:
        full = False
        try:
            result = prune_once(state, int(time.time()), batch=batch)
            full = result.full
            if result.dropped or result.cache_purged:
                log.debug("localdb pruned: users=%d touched=%d cache=%d", result.dropped, result.touched,
                          result.cache_purged)
        except Exception as exc:  # keep serving; the next pass tries again
            log.warning("pruning the LocalDB failed: %s", exc)
        await asyncio.sleep(pause if full else interval)
