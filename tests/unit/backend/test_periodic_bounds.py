"""Bounded periodic work on a backend: the LocalDB pruner keeps what moves need and drops the rest
in bounded passes; the move sweep re-checks relayed users in bounded rounds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from palomar.backend.localdb_upkeep import prune_once
from palomar.cluster.retention import USER_ROW_RETENTION
from palomar.localdb import LocalDB

NOW = 10_000_000
OLD = NOW - USER_ROW_RETENTION - 1


def backend(localdb: LocalDB, *, relayed=(), held=(), running=()) -> SimpleNamespace:
    moves = SimpleNamespace(running={g: None for g in running}, finishing={}, held_users=lambda: set(held))
    return SimpleNamespace(localdb=localdb, by_user={u: {1: None} for u in relayed}, moves=moves)


def test_a_pass_drops_forgotten_users_and_keeps_what_is_still_needed(tmp_path: Path) -> None:
    with LocalDB(str(tmp_path / "l.sqlite")) as db:
        db.user_put("g1", "gone", now=OLD)
        db.user_put("g1", "idle-for-days", now=OLD)        # has a relayed session
        db.user_put("g1", "delivering", now=OLD)           # an open LMTP transaction holds it
        db.user_put("g1", "recent", now=NOW - 10)
        db.user_put("g2", "moved", redirect_host="be2", now=OLD)  # g2 has a straggler redirect
        db.group_put("g2", redirect_host="be2", now=NOW - 10)
        db.user_put("g3", "moving", redirect_host="be2", now=OLD)  # g3's move runs here
        db.user_put("g4", "left-over", redirect_host="be2", now=OLD)  # no move state any more
        state = backend(db, relayed=["idle-for-days"], held=["delivering"], running=["g3"])
        result = prune_once(state, NOW)
        assert (result.dropped, result.touched, result.full) == (2, 4, False)
        kept = {(u.group, u.username): u.last_update for u in db.user_list()}
        assert kept == {("g1", "idle-for-days"): NOW, ("g1", "delivering"): NOW, ("g1", "recent"): NOW - 10,
                        ("g2", "moved"): NOW, ("g3", "moving"): NOW}
        assert db.users_served() == 3


def test_a_pass_is_bounded_and_says_when_more_is_waiting(tmp_path: Path) -> None:
    with LocalDB(str(tmp_path / "l.sqlite"), stale_keep_secs=10) as db:
        for i in range(7):
            db.user_put("g", f"u{i}", now=OLD)
        state = backend(db)
        assert prune_once(state, NOW, batch=3).full
        assert prune_once(state, NOW, batch=3).full
        last = prune_once(state, NOW, batch=3)
        assert (last.dropped, last.full) == (1, False)
        assert db.users_served() == 0


def test_the_sweep_rechecks_relayed_users_in_bounded_rounds() -> None:
    from palomar.backend.moves import SWEEP_BATCH, MoveExecutor

    users = [f"u{i}" for i in range(2 * SWEEP_BATCH + 50)]
    state = SimpleNamespace(by_user={u: {1: None} for u in users})
    executor = MoveExecutor(state, doveadm=None)  # type: ignore[arg-type]
    batches = [executor._next_recheck_batch() for _ in range(4)]
    assert [len(b) for b in batches] == [SWEEP_BATCH, SWEEP_BATCH, 50, SWEEP_BATCH]
    assert sorted(sum(batches[:3], [])) == sorted(users)  # one round covers every relayed user once
    assert batches[3] == users[:SWEEP_BATCH]  # and the next round starts over
