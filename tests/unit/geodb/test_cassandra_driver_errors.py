"""How the Cassandra engine meets the driver's failures: every failed request is a GeoDBError (the
guarded engine counts it as the GeoDB being unavailable), and the driver's own log lines about
unreachable nodes stay one line each (no traceback)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import pytest
from cassandra import WriteTimeout
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionShutdown
from cassandra.protocol import ServerError

from palomar.geodb.cassandra_engine import CassandraGeoEngine
from palomar.geodb.engine import GeoDBError


@pytest.mark.parametrize("name", ["cassandra.cluster", "cassandra.pool", "cassandra.connection"])
def test_a_driver_warning_with_an_exception_is_logged_as_one_line(
        caplog: pytest.LogCaptureFixture, name: str) -> None:
    caplog.set_level(logging.WARNING, logger="cassandra")
    try:
        raise ConnectionRefusedError(111, "Tried connecting to [('127.0.0.12', 9042)]. Last error: refused")
    except ConnectionRefusedError:
        logging.getLogger(name).warning("Failed to create connection pool for new host %s:", "127.0.0.12:9042",
                                        exc_info=True)
    [record] = [r for r in caplog.records if r.name == name]
    assert record.exc_info is None and "\n" not in caplog.text.strip()
    assert record.getMessage() == ("Failed to create connection pool for new host 127.0.0.12:9042: "
                                   "ConnectionRefusedError: [Errno 111] Tried connecting to "
                                   "[('127.0.0.12', 9042)]. Last error: refused")


class _FailingSession:
    """Stands in for the driver's session: every request's future fails with `error`, as the driver
    reports a request that a closing connection or the server refused."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def prepare(self, query: str) -> str:
        return query

    def execute_async(self, stmt: str, params: list, execution_profile: object) -> _FailingSession:
        return self

    def add_callbacks(self, callback: object, errback: Callable[[BaseException], None]) -> None:
        errback(self.error)


@pytest.mark.parametrize("error", [
    ConnectionShutdown("Connection to 127.0.0.11:9042 was closed"),
    ServerError(0, "java.lang.RuntimeException", None),
    WriteTimeout("CAS operation timed out", consistency=9, required_responses=2, received_responses=1,
                 write_type=5),
    NoHostAvailable("Unable to complete the operation against any hosts", {}),
], ids=lambda e: type(e).__name__)
async def test_every_driver_failure_of_a_request_is_a_geodb_error(error: BaseException) -> None:
    engine = CassandraGeoEngine("127.0.0.11", keyspace="ks", local_dc="dc1")
    engine._session = _FailingSession(error)
    with pytest.raises(GeoDBError, match=type(error).__name__):
        await engine.get("sites", {"id": uuid.uuid4()})


class _PagingSession:
    """Stands in for the driver's session over a users table whose token order is `order`: answers
    the two page queries of `scan_page` as Cassandra does (rows after the given key's token, at most
    LIMIT), and records every query."""

    def __init__(self, order: list[str], width: int) -> None:
        self.order, self.width, self.queries = order, width, []
        self.has_more_pages = False

    def prepare(self, query: str) -> str:
        return query

    def execute_async(self, stmt: str, params: list, execution_profile: object) -> _PagingSession:
        self.queries.append((stmt, list(params)))
        limit = int(stmt.rsplit("LIMIT ", 1)[1])
        start = self.order.index(params[0]) + 1 if params else 0
        self._page = [(name, *([None] * (self.width - 1))) for name in self.order[start:start + limit]]
        return self

    def add_callbacks(self, callback: Callable[[list], None], errback: object) -> None:
        callback(self._page)


async def test_the_users_are_paged_by_token_on_cassandra() -> None:
    from palomar.geodb.repository import GeoDB

    engine = CassandraGeoEngine("127.0.0.11", keyspace="ks", local_dc="dc1")
    table = engine._table("users")
    session = _PagingSession(["u3", "u1", "u4", "u2", "u5"], len(table.keys) + 2 * len(table.vals))
    engine._session = session
    pages = [[u.username for u in page] async for page in GeoDB(engine).user_pages(2)]
    assert pages == [["u3", "u1"], ["u4", "u2"], ["u5"]]  # token order, each user once
    first, *rest = session.queries
    assert "WHERE" not in first[0] and first[0].endswith(" LIMIT 2") and first[1] == []
    assert all('WHERE token("username") > token(?) LIMIT 2' in q for q, _ in rest)
    assert [p for _, p in rest] == [["u1"], ["u2"]]
