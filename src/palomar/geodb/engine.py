"""The GeoDB engine contract: the few primitives every engine (SQLite, Cassandra) implements.

Everything above this layer (the typed repository, the CLI, the services) is written against
these primitives only, so both engines serve exactly the same query set. Every read names a full
partition key (plus an optional clustering prefix); the only exception is `scan`, which callers
use for the small, explicitly listed tables (sites, tags, backends per site, ...) and for
admin listings whose name says they list everything.

Write semantics are Cassandra's: each column carries a write time (microseconds since the
epoch); an upsert only replaces a column whose stored write time is older or equal; a delete
writes a tombstone that hides every column written before it. Writes are therefore idempotent
and concurrent writers converge on the newest write, whatever order they arrive in.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Key = Mapping[str, Any]
Values = Mapping[str, Any]


def now_micros() -> int:
    """A write time in Cassandra's unit (microseconds since the epoch)."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Row:
    """One row: its column values and, per value column, the write time of that value."""

    values: dict[str, Any]
    writetimes: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def writetime(self, name: str) -> int | None:
        return self.writetimes.get(name)


@dataclass(frozen=True)
class InsertResult:
    """Outcome of a lightweight transaction: whether we won, and the row that is stored now."""

    applied: bool
    row: Row


@dataclass(frozen=True)
class Get:
    """One row by its full primary key, as `GeoEngine.get` (for `read_many`)."""

    table: str
    key: Key


@dataclass(frozen=True)
class Select:
    """Rows of one partition, as `GeoEngine.select` (for `read_many`)."""

    table: str
    partition: Key
    clustering: Sequence[Any] = ()


@dataclass(frozen=True)
class Scan:
    """Every row of a small table, as `GeoEngine.scan` (for `read_many`)."""

    table: str


Read = Get | Select | Scan


class GeoDBError(Exception):
    """A GeoDB call failed (engine unreachable, bad schema use)."""


class GeoEngine(abc.ABC):
    """Primitive, engine-neutral access to the GeoDB tables of `schema.cql`."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and make sure the schema exists."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections."""

    @abc.abstractmethod
    async def upsert(self, table: str, key: Key, values: Values, *, timestamp: int | None = None) -> None:
        """Write `values` for the row with the full primary `key` (last write wins per column).

        A value of None deletes that column (a cell tombstone at `timestamp`).
        """

    async def upsert_many(self, table: str, rows: Sequence[tuple[Key, Values]], *,
                          timestamp: int | None = None) -> None:
        """`upsert` for many rows at once (bulk provisioning). Not atomic across rows.

        This default sends them concurrently; the Cassandra engine sends unlogged batches of rows
        that share their replicas, the SQLite engine writes them in one transaction."""
        await asyncio.gather(*(self.upsert(table, key, values, timestamp=timestamp) for key, values in rows))

    @abc.abstractmethod
    async def insert_if_absent(self, table: str, key: Key, values: Values) -> InsertResult:
        """Lightweight transaction: create the row only if no live row has this primary key."""

    @abc.abstractmethod
    async def update_if(
        self, table: str, key: Key, values: Values, expected: Values
    ) -> InsertResult:
        """Lightweight transaction: write `values` only if the row's columns equal `expected`."""

    @abc.abstractmethod
    async def get(self, table: str, key: Key) -> Row | None:
        """Read one row by its full primary key; None when it does not exist (or is deleted)."""

    @abc.abstractmethod
    async def select(self, table: str, partition: Key, clustering: Sequence[Any] = ()) -> list[Row]:
        """Rows of one partition, optionally narrowed by a prefix of the clustering columns,
        in clustering order."""

    async def read_many(self, reads: Sequence[Read]) -> list[Any]:
        """Several independent reads at once; each answer is what `get` (Row or None), `select` or
        `scan` (list of Rows) returns, in the order of `reads`.

        The same queries as one call each, so both engines serve the same query set. Engines
        override it when one call costs more than the query itself: the SQLite engine runs the
        batch as one job on its worker thread instead of one thread hand-off per read. This
        default runs them concurrently (Cassandra: parallel requests).
        """
        return list(await asyncio.gather(*(
            self.get(r.table, r.key) if isinstance(r, Get) else self.scan(r.table) if isinstance(r, Scan)
            else self.select(r.table, r.partition, r.clustering)
            for r in reads
        )))

    async def read_then(self, reads: Sequence[Read], then: Callable[[list[Any]], Sequence[Read]]
                        ) -> tuple[list[Any], list[Any]]:
        """`read_many(reads)`, then `read_many` of the reads `then` makes from those answers: a
        second batch that depends on the first (the backend's ownership check: the users, then
        their groups). `then` must be pure and quick, engines may call it off the event loop. This
        default makes two calls; the SQLite engine runs both batches in one worker job."""
        first = await self.read_many(reads)
        return first, await self.read_many(then(first))

    @abc.abstractmethod
    async def scan(self, table: str) -> list[Row]:
        """Every row of a table. Only for small tables and for listings named as such."""

    @abc.abstractmethod
    async def scan_page(self, table: str, after: Any, limit: int) -> list[Row]:
        """At most `limit` rows of a table keyed by one partition column, those after the row whose
        key is `after` (None: from the start), in the engine's scan order (SQLite: key order;
        Cassandra: token order). For whole-table passes that must not hold the table in memory
        at once nor hand a caller a million rows in one go."""

    @abc.abstractmethod
    async def delete(self, table: str, key: Key, *, timestamp: int | None = None) -> None:
        """Delete a row (full primary key) or a whole partition (partition key only)."""
