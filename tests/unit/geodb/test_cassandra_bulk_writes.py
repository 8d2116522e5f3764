"""The Cassandra engine's bulk writes (`upsert_many`): rows grouped into unlogged batches of the
same replicas under a size bound, and batches sent through a bounded window kept full from the
driver's callbacks, with a session that stands in for the driver's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from cassandra import WriteTimeout

from palomar.geodb import cassandra_engine
from palomar.geodb.cassandra_engine import _Window, write_batches
from palomar.geodb.engine import GeoDBError


@pytest.mark.parametrize(("rows", "max_rows", "max_bytes", "expected"), [
    ([], 3, 100, []),
    ([("a", 10, 1), ("a", 10, 2), ("a", 10, 3)], 3, 100, [[1, 2, 3]]),
    ([("a", 10, 1), ("a", 10, 2), ("a", 10, 3), ("a", 10, 4)], 3, 100, [[1, 2, 3], [4]]),
    ([("a", 10, 1), ("b", 10, 2), ("a", 10, 3), ("b", 10, 4)], 3, 100, [[1, 3], [2, 4]]),
    ([("a", 60, 1), ("a", 40, 2), ("a", 1, 3)], 9, 100, [[1, 2], [3]]),
    ([("a", 500, 1), ("a", 10, 2)], 9, 100, [[1], [2]]),
    ([("a", 10, 1), ("a", 500, 2), ("a", 10, 3)], 9, 100, [[1], [2], [3]]),
], ids=["none", "one full batch", "row limit", "by replicas", "byte limit", "oversized first", "oversized middle"])
def test_rows_are_batched_by_replicas_within_the_limits(
        rows: list[tuple[str, int, int]], max_rows: int, max_bytes: int, expected: list[list[int]]) -> None:
    assert write_batches(rows, max_rows, max_bytes) == expected


class _Future:
    def __init__(self, session: _Session, stmt: int) -> None:
        self.session, self.stmt = session, stmt

    def add_callbacks(self, callback: Callable[[Any], None], errback: Callable[[BaseException], None]) -> None:
        self.session.answer(self.stmt, callback, errback)


class _Session:
    """Answers each request at once in the caller's thread (as the driver does for a request already
    answered) or later from a thread of its own (its I/O thread); `failing` statements fail."""

    def __init__(self, *, threaded: bool, failing: frozenset[int] = frozenset()) -> None:
        self.threaded, self.failing = threaded, failing
        self.sent: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()

    def execute_async(self, stmt: int, execution_profile: object) -> _Future:
        with self.lock:
            self.sent.append(stmt)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        return _Future(self, stmt)

    def answer(self, stmt: int, callback: Callable[[Any], None], errback: Callable[[BaseException], None]) -> None:
        def run() -> None:
            with self.lock:
                self.in_flight -= 1
            if stmt in self.failing:
                errback(WriteTimeout("timed out", consistency=1, required_responses=1, received_responses=0,
                                      write_type=0))
            else:
                callback(None)

        if self.threaded:
            threading.Thread(target=run).start()
        else:
            run()


async def test_every_statement_is_sent_once_within_the_window() -> None:
    session = _Session(threaded=True)
    await _Window(session, list(range(1000)), None, asyncio.get_running_loop()).run()
    assert sorted(session.sent) == list(range(1000))
    assert session.most_in_flight <= cassandra_engine.WRITE_WINDOW


async def test_answers_inside_the_sending_call_do_not_recurse() -> None:
    session = _Session(threaded=False)
    await _Window(session, list(range(20_000)), None, asyncio.get_running_loop()).run()
    assert session.sent == list(range(20_000))


@pytest.mark.parametrize("threaded", [False, True], ids=["answered at once", "answered by a thread"])
async def test_the_first_failure_stops_the_sending_and_is_a_geodb_error(threaded: bool) -> None:
    session = _Session(threaded=threaded, failing=frozenset({2}))
    with pytest.raises(GeoDBError, match="WriteTimeout"):
        await _Window(session, list(range(5000)), None, asyncio.get_running_loop()).run()
    assert session.in_flight == 0
    assert len(session.sent) <= 3 + cassandra_engine.WRITE_WINDOW
    if not threaded:
        assert session.sent == [0, 1, 2]


async def test_nothing_to_send_ends_at_once() -> None:
    await asyncio.wait_for(_Window(_Session(threaded=False), [], None, asyncio.get_running_loop()).run(), 5)
