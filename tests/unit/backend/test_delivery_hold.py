"""The move fence of an LMTP recipient (`MoveExecutor.begin_delivery`) against a real SQLite GeoDB
and LocalDB: a redirect is still seen on every RCPT, but a busy mailbox does not cost a LocalDB
write per RCPT."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from backend_states import Clock, backend_state
from palomar.backend.moves import MoveExecutor
from palomar.backend.service import BackendState
from palomar.cluster.model import Group
from palomar.geodb.sqlite_engine import SQLiteGeoEngine

USER = "alice@example.test"


@pytest.fixture
async def state(tmp_path) -> AsyncIterator[BackendState]:
    backend = await backend_state(tmp_path, SQLiteGeoEngine(str(tmp_path / "geodb.sqlite")), clock=Clock())
    backend.moves = MoveExecutor(backend, None)
    yield backend
    backend.localdb.close()
    await backend.geodb.close()


def group(state: BackendState) -> Group:
    assert state.site_id is not None
    return Group(state.site_id, "mine", backend_id=state.backend_id)


def writes(state: BackendState) -> int:
    return state.localdb._con.total_changes


async def test_rcpts_of_one_second_write_the_users_row_once(state: BackendState) -> None:
    moves, clock = state.moves, state.clock
    assert moves is not None and isinstance(clock, Clock)
    holder = object()
    assert moves.begin_delivery(USER, group(state), holder) is None  # type: ignore[arg-type]
    row = state.localdb.user_get("mine", USER)
    assert row is not None and row.redirect_host is None and row.last_update == 1_000_000
    before = writes(state)
    assert moves.begin_delivery(USER, group(state), object()) is None  # type: ignore[arg-type]
    assert writes(state) == before  # the row already says this
    assert len(moves.open_deliveries(lambda g, u: u == USER)) == 2  # both transactions hold the user
    clock.now += 1
    assert moves.begin_delivery(USER, group(state), object()) is None  # type: ignore[arg-type]
    assert writes(state) > before
    row = state.localdb.user_get("mine", USER)
    assert row is not None and row.last_update == 1_000_001


async def test_a_redirect_written_by_a_move_is_seen_by_the_next_rcpt(state: BackendState) -> None:
    moves = state.moves
    assert moves is not None
    assert moves.begin_delivery(USER, group(state), object()) is None  # type: ignore[arg-type]
    state.localdb.user_put("mine", USER, redirect_host="10.0.0.9", now=int(state.clock()))  # the move's step
    before = writes(state)
    holder = object()
    assert moves.begin_delivery(USER, group(state), holder) == "10.0.0.9"  # type: ignore[arg-type]
    assert writes(state) == before and holder not in moves.open_deliveries(lambda g, u: True)
    row = state.localdb.user_get("mine", USER)
    assert row is not None and row.redirect_host == "10.0.0.9"


async def test_a_redirect_to_this_backend_is_cleared_in_the_same_second(state: BackendState) -> None:
    """A user moved back here: the row's old redirect names this backend; the RCPT is served here and
    the row is rewritten without it, even though it was written this second."""
    moves = state.moves
    assert moves is not None
    state.localdb.user_put("mine", USER, redirect_host=state.name, now=int(state.clock()))
    assert moves.begin_delivery(USER, group(state), object()) is None  # type: ignore[arg-type]
    row = state.localdb.user_get("mine", USER)
    assert row is not None and row.redirect_host is None
