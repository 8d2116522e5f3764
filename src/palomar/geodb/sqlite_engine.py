"""The embedded GeoDB engine: the tables of `schema.cql` in one SQLite file, Cassandra semantics.

Mapping (see docs/design/geodb-schema.md):

* one SQL table per CQL table, primary key = the CQL primary key columns;
* every value column `c` has a companion `c__wt` holding its write time (microseconds); a
  NULL value with a write time is a cell tombstone, both NULL means "never written";
* `_marker` is the row marker (write time of the INSERT that created the row) and
  `_deleted` the newest tombstone covering the row; `<table>__partition_deletes` keeps
  partition tombstones, which also shadow rows written later with older timestamps;
* cells hidden by a tombstone are cleared when the tombstone is written, so a stored row
  is live exactly when it has a marker or a non-NULL value, and reads need no merging.

Several processes on one host may share the file: WAL mode, a busy timeout, and every
read-modify-write (per-column merge, lightweight transactions) runs inside BEGIN IMMEDIATE.
Writes, scans, partition selects and anything that may wait for a lock run on one worker thread
per engine. Point reads (`get`, and small `read_many` batches without scans: the login paths') run
inline on a second, read-only connection with no busy timeout when no write is queued on the
worker: a hand-off to the thread costs more CPU than such a read (docs/design/login-path-cost.md),
and in WAL mode a read does not wait for writers. A read that finds the file busy goes to the
worker thread after all, which waits with the busy timeout; a read never overtakes a write queued
before it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from palomar.geodb.cells import StoredRow, apply_deletion, merge_write
from palomar.geodb.engine import (
    GeoDBError,
    GeoEngine,
    Get,
    InsertResult,
    Key,
    Read,
    Row,
    Scan,
    Values,
    now_micros,
)
from palomar.geodb.schema import (
    TableDef,
    datetime_to_millis,
    load_schema,
    millis_to_datetime,
    table_def,
    uuid_from_order_key,
    uuid_order_key,
    validate_clustering,
    validate_delete_key,
    validate_key,
    validate_page_after,
    validate_partition,
    validate_timestamp,
    validate_values,
    values_equal,
)

T = TypeVar("T")

_SQL_TYPES = {"uuid": "BLOB", "int": "INTEGER", "double": "REAL", "text": "TEXT", "timestamp": "INTEGER"}
_MARKER, _DELETED, _WT = "_marker", "_deleted", "__wt"
_PDEL_SUFFIX = "__partition_deletes"
INLINE_READS = 8
"""At most this many reads of one `read_many` run inline (a login's batch has two to four; a bulk
import's check of many users goes to the worker and leaves the loop free)."""


def _busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY / SQLITE_LOCKED: another connection holds what the statement needs."""
    return "locked" in str(exc) or "busy" in str(exc)


def _q(name: str) -> str:
    return f'"{name}"'


def _to_sql(ctype: str, value: Any) -> Any:
    if value is None:
        return None
    if ctype == "uuid":
        return uuid_order_key(value)
    if ctype == "timestamp":
        return datetime_to_millis(value)
    return value


def _from_sql(ctype: str, value: Any) -> Any:
    if value is None:
        return None
    if ctype == "uuid":
        return uuid_from_order_key(value)
    if ctype == "timestamp":
        return millis_to_datetime(value)
    if ctype == "double":
        return float(value)
    return value


class _Table:
    """The SQL text for one CQL table, built once."""

    def __init__(self, tdef: TableDef) -> None:
        self.tdef = tdef
        for col in tdef.columns:
            if col.startswith("_") or col.endswith(_WT):
                raise GeoDBError(f"{tdef.name}: column name {col!r} clashes with the SQLite mapping")
        self.name = _q(tdef.name)
        self.pdel = _q(tdef.name + _PDEL_SUFFIX)
        self.keys = tdef.key_columns
        self.vals = tdef.value_columns
        self.stored_cols = [*self.keys, _MARKER, _DELETED]
        for col in self.vals:
            self.stored_cols += [col, col + _WT]
        self.select_list = ", ".join(_q(c) for c in self.stored_cols)
        live = [f"{_q(_MARKER)} IS NOT NULL"] + [f"{_q(c)} IS NOT NULL" for c in self.vals]
        self.live = "(" + " OR ".join(live) + ")"
        self.order_by = ", ".join(_q(c) for c in self.keys)
        self.key_where = " AND ".join(f"{_q(c)} = ?" for c in self.keys)
        self.part_where = " AND ".join(f"{_q(c)} = ?" for c in tdef.partition_key)
        self.replace = (
            f"INSERT OR REPLACE INTO {self.name} ({self.select_list}) "
            f"VALUES ({', '.join('?' for _ in self.stored_cols)})"
        )

    def create_sql(self) -> list[str]:
        types = self.tdef.columns
        cols = [f"{_q(c)} {_SQL_TYPES[types[c]]} NOT NULL" for c in self.keys]
        cols += [f"{_q(_MARKER)} INTEGER", f"{_q(_DELETED)} INTEGER"]
        for c in self.vals:
            cols += [f"{_q(c)} {_SQL_TYPES[types[c]]}", f"{_q(c + _WT)} INTEGER"]
        pk = ", ".join(_q(c) for c in self.keys)
        ppk = ", ".join(_q(c) for c in self.tdef.partition_key)
        pcols = [f"{_q(c)} {_SQL_TYPES[types[c]]} NOT NULL" for c in self.tdef.partition_key]
        return [
            f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(cols)}, PRIMARY KEY ({pk})) WITHOUT ROWID",
            f"CREATE TABLE IF NOT EXISTS {self.pdel} ({', '.join(pcols)}, {_q(_DELETED)} INTEGER NOT NULL, "
            f"PRIMARY KEY ({ppk})) WITHOUT ROWID",
        ]

    def missing_columns_sql(self, existing: set[str]) -> list[str]:
        """ALTERs that add value columns declared in schema.cql after the file was created."""
        out = []
        for c in self.vals:
            if c not in existing:
                out.append(f"ALTER TABLE {self.name} ADD COLUMN {_q(c)} {_SQL_TYPES[self.tdef.columns[c]]}")
            if c + _WT not in existing:
                out.append(f"ALTER TABLE {self.name} ADD COLUMN {_q(c + _WT)} INTEGER")
        return out

    def key_params(self, key: dict[str, Any]) -> list[Any]:
        return [_to_sql(self.tdef.columns[c], key[c]) for c in self.keys]

    def part_params(self, key: dict[str, Any]) -> list[Any]:
        return [_to_sql(self.tdef.columns[c], key[c]) for c in self.tdef.partition_key]

    def load(self, sql_row: Sequence[Any] | None, partition_deleted: int | None) -> StoredRow:
        state = StoredRow()
        if sql_row is not None:
            n = len(self.keys)
            state.marker, state.deleted = sql_row[n], sql_row[n + 1]
            for i, col in enumerate(self.vals):
                value, wt = sql_row[n + 2 + 2 * i], sql_row[n + 3 + 2 * i]
                if wt is not None:
                    state.cells[col] = (_from_sql(self.tdef.columns[col], value), wt)
        if partition_deleted is not None:
            apply_deletion(state, partition_deleted)
        return state

    def store_params(self, key: dict[str, Any], state: StoredRow) -> list[Any]:
        params = [*self.key_params(key), state.marker, state.deleted]
        for col in self.vals:
            value, wt = state.cells.get(col, (None, None))
            params += [_to_sql(self.tdef.columns[col], value), wt]
        return params

    def to_row(self, key: dict[str, Any], state: StoredRow) -> Row:
        values: dict[str, Any] = dict(key)
        writetimes: dict[str, int] = {}
        for col in self.vals:
            value, wt = state.cells.get(col, (None, None))
            values[col] = value
            if value is not None:
                writetimes[col] = wt
        return Row(values, writetimes)

    def from_sql_row(self, sql_row: Sequence[Any]) -> Row:
        key = {c: _from_sql(self.tdef.columns[c], sql_row[i]) for i, c in enumerate(self.keys)}
        return self.to_row(key, self.load(sql_row, None))


class SQLiteGeoEngine(GeoEngine):
    """GeoDB engine on one SQLite file (the embedded default; several processes may share it)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 30_000) -> None:
        if not isinstance(path, str) or not path:
            raise GeoDBError("sqlite GeoDB: 'path' must be a non-empty string")
        if not isinstance(busy_timeout_ms, int) or busy_timeout_ms < 0:
            raise GeoDBError("sqlite GeoDB: 'busy_timeout_ms' must be a non-negative int")
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._schema = load_schema()
        self._tables = {name: _Table(tdef) for name, tdef in self._schema.items()}
        self._executor: ThreadPoolExecutor | None = None
        self._con: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        """Read-only, no busy timeout: the inline reads (None for an in-memory database, which a
        second connection would not share)."""
        self._writes_queued = 0
        """Writes handed to the worker thread and not yet answered: while any is, reads queue behind
        them (a read must see the writes its caller started before it)."""

    def __repr__(self) -> str:
        return f"SQLiteGeoEngine(path={self.path!r})"

    # ------------------------------------------------------------ plumbing

    async def _run(self, fn: Callable[..., T], *args: Any, write: bool = True) -> T:
        if self._executor is None:
            raise GeoDBError(f"{self!r} is not open")
        loop = asyncio.get_running_loop()
        self._writes_queued += write
        try:
            return await loop.run_in_executor(self._executor, self._guard, fn, args)
        finally:
            self._writes_queued -= write

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """`job` inline when no write is queued on the worker and the file is not busy, else on the worker."""
        if self._reader is not None and not self._writes_queued:
            try:
                return job(self._reader)
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise GeoDBError(f"sqlite GeoDB {self.path}: {exc}") from exc
            except sqlite3.Error as exc:
                raise GeoDBError(f"sqlite GeoDB {self.path}: {exc}") from exc
        return await self._run(job, write=False)

    def _guard(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._con is None:
            raise GeoDBError(f"{self!r} is not open")
        try:
            return fn(self._con, *args)
        except sqlite3.Error as exc:
            raise GeoDBError(f"sqlite GeoDB {self.path}: {exc}") from exc

    @staticmethod
    def _write(con: sqlite3.Connection, body: Callable[[], T]) -> T:
        """Run `body` in one BEGIN IMMEDIATE transaction (serialised across processes)."""
        con.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                con.execute("ROLLBACK")
            raise
        return result

    def _table(self, name: str) -> _Table:
        table_def(self._schema, name)  # the uniform "unknown table" error
        return self._tables[name]

    # ------------------------------------------------------------ open / close

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geodb-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)
            self._reader = self._open_reader()
        except BaseException:
            executor, self._executor = self._executor, None
            executor.submit(self._close_sync)
            executor.shutdown(wait=True)
            raise

    def _open_reader(self) -> sqlite3.Connection | None:
        """The inline reads' connection, opened after `_open_sync` made the tables and WAL mode."""
        if self.path == ":memory:" or "mode=memory" in self.path:
            return None
        target = self.path if self.path.startswith("file:") else Path(os.path.abspath(self.path)).as_uri()
        try:
            con = sqlite3.connect(target, timeout=0, isolation_level=None, uri=True, check_same_thread=False)
            con.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise GeoDBError(f"sqlite GeoDB {self.path}: cannot open: {exc}") from exc
        return con

    def _open_sync(self) -> None:
        try:
            if self.path != ":memory:" and not self.path.startswith("file:"):
                directory = os.path.dirname(os.path.abspath(self.path))
                os.makedirs(directory, mode=0o700, exist_ok=True)
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            con = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                uri=self.path.startswith("file:"),
            )
        except (OSError, sqlite3.Error) as exc:
            raise GeoDBError(f"sqlite GeoDB {self.path}: cannot open: {exc}") from exc
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            self._retry_locked(lambda: con.execute("PRAGMA journal_mode = WAL").fetchone())
            con.execute("PRAGMA synchronous = NORMAL")
            self._write(con, lambda: self._create_tables(con))
        except sqlite3.Error as exc:
            con.close()
            raise GeoDBError(f"sqlite GeoDB {self.path}: cannot initialise: {exc}") from exc
        self._con = con

    def _retry_locked(self, fn: Callable[[], T]) -> T:
        """Switching to WAL needs a moment of exclusive access; other openers may hold the file."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.005
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _busy(exc):
                    raise
                if time.monotonic() >= deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _create_tables(self, con: sqlite3.Connection) -> None:
        for table in self._tables.values():
            for stmt in table.create_sql():
                con.execute(stmt)
            existing = {r[1] for r in con.execute(f"PRAGMA table_info({table.name})")}
            missing_keys = [c for c in table.keys if c not in existing]
            if missing_keys:
                raise GeoDBError(
                    f"sqlite GeoDB {self.path}: table {table.tdef.name} has a different primary key "
                    f"than schema.cql (missing {', '.join(missing_keys)})"
                )
            for stmt in table.missing_columns_sql(existing):
                con.execute(stmt)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=True)

    def _close_sync(self) -> None:
        for con in (self._con, self._reader):
            if con is not None:
                con.close()
        self._con = self._reader = None

    # ------------------------------------------------------------ shared steps (worker thread)

    def _load(self, con: sqlite3.Connection, table: _Table, key: dict[str, Any]) -> StoredRow:
        prow = con.execute(
            f"SELECT {_q(_DELETED)} FROM {table.pdel} WHERE {table.part_where}", table.part_params(key)
        ).fetchone()
        cur = con.execute(
            f"SELECT {table.select_list} FROM {table.name} WHERE {table.key_where}", table.key_params(key)
        )
        return table.load(cur.fetchone(), prow[0] if prow else None)

    def _store(self, con: sqlite3.Connection, table: _Table, key: dict[str, Any], state: StoredRow) -> None:
        con.execute(table.replace, table.store_params(key, state))

    @staticmethod
    def _lwt_time(state: StoredRow, columns: Sequence[str]) -> int:
        """A write time that makes an applied LWT take effect: now, or just above what it overrides."""
        floor = [now_micros(), (state.deleted or 0) + 1]
        floor += [state.cells[c][1] + 1 for c in columns if c in state.cells]
        return max(floor)

    # ------------------------------------------------------------ writes

    async def upsert(self, table: str, key: Key, values: Values, *, timestamp: int | None = None) -> None:
        await self.upsert_many(table, [(key, values)], timestamp=timestamp)

    async def upsert_many(self, table: str, rows: Sequence[tuple[Key, Values]], *,
                          timestamp: int | None = None) -> None:
        """All rows in one transaction: one commit (one fsync) per batch instead of per row."""
        t = self._table(table)
        checked = [(validate_key(t.tdef, key), validate_values(t.tdef, values)) for key, values in rows]
        ts = now_micros() if timestamp is None else validate_timestamp(timestamp)

        def run(con: sqlite3.Connection) -> None:
            def body() -> None:
                for k, v in checked:
                    state = self._load(con, t, k)
                    if merge_write(state, t.tdef.columns, v, ts, marker=True):
                        self._store(con, t, k, state)

            self._write(con, body)

        await self._run(run)

    async def insert_if_absent(self, table: str, key: Key, values: Values) -> InsertResult:
        t = self._table(table)
        k = validate_key(t.tdef, key)
        v = validate_values(t.tdef, values)

        def run(con: sqlite3.Connection) -> InsertResult:
            def body() -> InsertResult:
                state = self._load(con, t, k)
                if state.live:
                    return InsertResult(False, t.to_row(k, state))
                ts = self._lwt_time(state, list(state.cells))
                merge_write(state, t.tdef.columns, v, ts, marker=True)
                self._store(con, t, k, state)
                return InsertResult(True, t.to_row(k, state))

            return self._write(con, body)

        return await self._run(run)

    async def update_if(self, table: str, key: Key, values: Values, expected: Values) -> InsertResult:
        t = self._table(table)
        k = validate_key(t.tdef, key)
        v = validate_values(t.tdef, values)
        e = validate_values(t.tdef, expected, "expected")
        if not v:
            raise GeoDBError(f"{table}: update_if needs at least one column to write")
        if not e:
            raise GeoDBError(f"{table}: update_if needs at least one expected column")

        def run(con: sqlite3.Connection) -> InsertResult:
            def body() -> InsertResult:
                state = self._load(con, t, k)
                current = t.to_row(k, state)
                for col, want in e.items():
                    if not values_equal(t.tdef.columns[col], current.values[col], want):
                        return InsertResult(False, current)
                ts = self._lwt_time(state, list(v))
                merge_write(state, t.tdef.columns, v, ts, marker=False)
                self._store(con, t, k, state)
                return InsertResult(True, t.to_row(k, state))

            return self._write(con, body)

        return await self._run(run)

    async def delete(self, table: str, key: Key, *, timestamp: int | None = None) -> None:
        t = self._table(table)
        k, whole_partition = validate_delete_key(t.tdef, key)
        ts = now_micros() if timestamp is None else validate_timestamp(timestamp)

        def run_row(con: sqlite3.Connection) -> None:
            def body() -> None:
                state = self._load(con, t, k)
                if apply_deletion(state, ts):
                    self._store(con, t, k, state)

            self._write(con, body)

        def run_partition(con: sqlite3.Connection) -> None:
            def body() -> None:
                params = t.part_params(k)
                cols = [_q(c) for c in t.tdef.partition_key]
                con.execute(
                    f"INSERT INTO {t.pdel} ({', '.join(cols)}, {_q(_DELETED)}) "
                    f"VALUES ({', '.join('?' for _ in cols)}, ?) "
                    f"ON CONFLICT ({', '.join(cols)}) DO UPDATE SET "
                    f"{_q(_DELETED)} = max({_q(_DELETED)}, excluded.{_q(_DELETED)})",
                    [*params, ts],
                )
                # Rows of the partition now only need what the tombstone does not hide.
                sets = [
                    f"{_q(_MARKER)} = CASE WHEN {_q(_MARKER)} <= :ts THEN NULL ELSE {_q(_MARKER)} END",
                    f"{_q(_DELETED)} = max(coalesce({_q(_DELETED)}, :ts), :ts)",
                ]
                for c in t.vals:
                    wt = _q(c + _WT)
                    sets.append(f"{_q(c)} = CASE WHEN {wt} <= :ts THEN NULL ELSE {_q(c)} END")
                    sets.append(f"{wt} = CASE WHEN {wt} <= :ts THEN NULL ELSE {wt} END")
                named = {f"p{i}": p for i, p in enumerate(params)} | {"ts": ts}
                where = " AND ".join(f"{_q(c)} = :p{i}" for i, c in enumerate(t.tdef.partition_key))
                con.execute(f"UPDATE {t.name} SET {', '.join(sets)} WHERE {where}", named)
                # Fully shadowed rows carry nothing the partition tombstone does not already say.
                empty = " AND ".join([f"{_q(_MARKER)} IS NULL"] + [f"{_q(c + _WT)} IS NULL" for c in t.vals])
                con.execute(f"DELETE FROM {t.name} WHERE {where} AND {empty}", named)

            self._write(con, body)

        await self._run(run_partition if whole_partition else run_row)

    # ------------------------------------------------------------ reads

    def _get_job(self, table: str, key: Key) -> Callable[[sqlite3.Connection], Row | None]:
        """Validate now (errors belong to the caller), query later on the worker thread."""
        t = self._table(table)
        k = validate_key(t.tdef, key)
        sql = f"SELECT {t.select_list} FROM {t.name} WHERE {t.key_where} AND {t.live}"
        params = t.key_params(k)

        def run(con: sqlite3.Connection) -> Row | None:
            sql_row = con.execute(sql, params).fetchone()
            return None if sql_row is None else t.from_sql_row(sql_row)

        return run

    async def get(self, table: str, key: Key) -> Row | None:
        return await self._read(self._get_job(table, key))

    async def select(self, table: str, partition: Key, clustering: Sequence[Any] = ()) -> list[Row]:
        # on the worker: a partition may be long (a site's groups), which would stall the loop
        return await self._run(self._select_job(table, partition, clustering), write=False)

    async def read_many(self, reads: Sequence[Read]) -> list[Any]:
        """All reads in one job: inline (the login paths batch point reads and a site's backends this
        way), or one hand-off to the worker for a scan or more than `INLINE_READS` reads."""
        jobs = [self._get_job(r.table, r.key) if isinstance(r, Get) else self._scan_job(r.table)
                if isinstance(r, Scan) else self._select_job(r.table, r.partition, r.clustering) for r in reads]

        def run(con: sqlite3.Connection) -> list[Any]:
            return [job(con) for job in jobs]

        if len(reads) > INLINE_READS or any(isinstance(r, Scan) for r in reads):
            return await self._run(run, write=False)
        return await self._read(run)

    def _select_job(self, table: str, partition: Key, clustering: Sequence[Any]
                    ) -> Callable[[sqlite3.Connection], list[Row]]:
        t = self._table(table)
        p = validate_partition(t.tdef, partition)
        prefix = validate_clustering(t.tdef, clustering)
        cols = [*t.tdef.partition_key, *t.tdef.clustering[: len(prefix)]]
        params = t.part_params(p) + [
            _to_sql(t.tdef.columns[c], value) for c, value in zip(t.tdef.clustering, prefix, strict=False)
        ]
        where = " AND ".join(f"{_q(c)} = ?" for c in cols)

        def run(con: sqlite3.Connection) -> list[Row]:
            cur = con.execute(
                f"SELECT {t.select_list} FROM {t.name} WHERE {where} AND {t.live} ORDER BY {t.order_by}",
                params,
            )
            return [t.from_sql_row(r) for r in cur.fetchall()]

        return run

    async def scan(self, table: str) -> list[Row]:
        return await self._run(self._scan_job(table), write=False)

    def _scan_job(self, table: str) -> Callable[[sqlite3.Connection], list[Row]]:
        t = self._table(table)

        def run(con: sqlite3.Connection) -> list[Row]:
            cur = con.execute(f"SELECT {t.select_list} FROM {t.name} WHERE {t.live} ORDER BY {t.order_by}")
            return [t.from_sql_row(r) for r in cur.fetchall()]

        return run

    async def scan_page(self, table: str, after: Any, limit: int) -> list[Row]:
        t = self._table(table)
        col, start = validate_page_after(t.tdef, after)
        where = t.live if start is None else f"{_q(col)} > ? AND {t.live}"
        params = [] if start is None else [_to_sql(t.tdef.columns[col], start)]
        sql = f"SELECT {t.select_list} FROM {t.name} WHERE {where} ORDER BY {t.order_by} LIMIT ?"

        def run(con: sqlite3.Connection) -> list[Row]:
            return [t.from_sql_row(r) for r in con.execute(sql, [*params, max(limit, 1)]).fetchall()]

        return await self._run(run, write=False)

