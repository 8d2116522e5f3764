"""What only the SQLite engine promises: its file, its modes, persistence, and a free event loop."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import sqlite3
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palomar.geodb import GeoDBError, open_engine
from palomar.geodb.engine import Get, Scan, Select
from palomar.geodb.sqlite_engine import INLINE_READS, SQLiteGeoEngine
from sqlite_workers import open_and_write


async def test_open_creates_private_directory_and_file_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "geo" / "geodb.sqlite"
    engine = SQLiteGeoEngine(str(path))
    await engine.open()
    try:
        await engine.upsert("tags", {"id": uuid.uuid4()}, {"tag": "t"})
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        wal = Path(str(path) + "-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"sites", "users", "cluster_settings", "users__partition_deletes"} <= tables
    finally:
        await engine.close()


async def test_data_and_tombstones_survive_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "geodb.sqlite")
    key = {"username": "persist"}
    first = SQLiteGeoEngine(path)
    await first.open()
    await first.open()  # idempotent
    await first.upsert("users", key, {"group_name": "g"}, timestamp=100)
    await first.delete("users", key, timestamp=200)
    await first.upsert("user_sites", {"username": "p2", "site_id": uuid.uuid4()}, {"preferred_site": 1})
    await first.close()
    await first.close()  # idempotent

    second = SQLiteGeoEngine(path)
    await second.open()
    try:
        await second.upsert("users", key, {"group_name": "older-than-delete"}, timestamp=150)
        assert await second.get("users", key) is None
        assert len(await second.select("user_sites", {"username": "p2"})) == 1
    finally:
        await second.close()


async def test_new_schema_columns_are_added_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "geodb.sqlite"
    with sqlite3.connect(path) as raw:  # a file from before tags grew its value column
        raw.execute('CREATE TABLE "tags" ("id" BLOB NOT NULL, "_marker" INTEGER, "_deleted" INTEGER, '
                    'PRIMARY KEY ("id")) WITHOUT ROWID')
    engine = SQLiteGeoEngine(str(path))
    await engine.open()
    try:
        key = {"id": uuid.uuid4()}
        await engine.upsert("tags", key, {"tag": "added"})
        row = await engine.get("tags", key)
        assert row is not None and row["tag"] == "added"
    finally:
        await engine.close()


@contextlib.asynccontextmanager
async def engine_and_holder(tmp_path: Path, busy_timeout_ms: int) -> AsyncIterator[tuple[SQLiteGeoEngine, sqlite3.Connection]]:
    """An open engine, and another connection to its file standing in for another process."""
    path = str(tmp_path / "geodb.sqlite")
    engine = SQLiteGeoEngine(path, busy_timeout_ms=busy_timeout_ms)
    await engine.open()
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        yield engine, holder
    finally:
        holder.close()
        await engine.close()


async def test_a_write_waiting_for_another_process_does_not_block_the_loop(tmp_path: Path) -> None:
    async with engine_and_holder(tmp_path, 20_000) as (engine, holder):
        holder.execute("BEGIN IMMEDIATE")  # as another process in the middle of a write
        key = {"id": uuid.uuid4()}
        pending = asyncio.create_task(engine.upsert("tags", key, {"tag": "waited"}))
        for _ in range(20):
            await asyncio.sleep(0)  # the loop keeps turning; a blocking engine would stall here
        assert not pending.done()
        holder.execute("COMMIT")
        await pending
        row = await engine.get("tags", key)
        assert row is not None and row["tag"] == "waited"


async def test_lock_held_past_the_busy_timeout_is_a_geodb_error(tmp_path: Path) -> None:
    async with engine_and_holder(tmp_path, 50) as (engine, holder):
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(GeoDBError, match="locked"):
            await engine.upsert("tags", {"id": uuid.uuid4()}, {"tag": "x"})
        holder.execute("ROLLBACK")
        await engine.upsert("tags", {"id": uuid.uuid4()}, {"tag": "x"})  # the engine is still usable


async def test_use_before_open_is_an_error(tmp_path: Path) -> None:
    engine = SQLiteGeoEngine(str(tmp_path / "geodb.sqlite"))
    with pytest.raises(GeoDBError, match="not open"):
        await engine.get("tags", {"id": uuid.uuid4()})


async def test_unopenable_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    engine = SQLiteGeoEngine(str(blocker / "geodb.sqlite"))
    with pytest.raises(GeoDBError, match="cannot open"):
        await engine.open()


def test_open_engine_factory(tmp_path: Path) -> None:
    engine = open_engine("sqlite", path=str(tmp_path / "g.sqlite"))
    assert isinstance(engine, SQLiteGeoEngine)
    assert repr(engine) == f"SQLiteGeoEngine(path={str(tmp_path / 'g.sqlite')!r})"
    with pytest.raises(GeoDBError, match="unsupported GeoDB driver 'mysql'"):
        open_engine("mysql", hosts=["127.0.0.1"])
    with pytest.raises(GeoDBError, match="unknown option"):
        open_engine("sqlite", path="x", hosts="y")
    with pytest.raises(GeoDBError, match="'path' option is required"):
        open_engine("sqlite")


async def test_processes_creating_the_file_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh" / "geodb.sqlite")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=open_and_write, args=(path, w, barrier)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        await asyncio.to_thread(p.join, 120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    engine = SQLiteGeoEngine(path)
    await engine.open()
    try:
        assert sorted(r["tag"] for r in await engine.scan("tags")) == ["w0", "w1", "w2", "w3"]
    finally:
        await engine.close()


class _HandOffCounter(SQLiteGeoEngine):
    """Counts the jobs handed to the worker thread."""

    handed_off = 0

    async def _run(self, fn, *args, **options):
        self.handed_off += 1
        return await super()._run(fn, *args, **options)


async def test_point_reads_need_no_thread_hand_off(tmp_path: Path) -> None:
    engine = _HandOffCounter(str(tmp_path / "geodb.sqlite"))
    await engine.open()
    try:
        key = {"username": "inline"}
        await engine.upsert("users", key, {"group_name": "g"})
        site = uuid.uuid4()
        await engine.upsert("user_sites", {"username": "inline", "site_id": site}, {"preferred_site": 1})
        engine.handed_off = 0
        assert (await engine.get("users", key))["group_name"] == "g"
        user, sites = await engine.read_many([Get("users", key), Select("user_sites", {"username": "inline"})])
        assert user["group_name"] == "g" and [r["site_id"] for r in sites] == [site]
        assert engine.handed_off == 0
        await engine.read_many([Get("users", key), Scan("users")])  # a scan may be long: the worker's
        assert len(await engine.select("user_sites", {"username": "inline"})) == 1  # so may a partition
        assert engine.handed_off == 2
        many = await engine.read_many([Get("users", {"username": f"u{i}"}) for i in range(INLINE_READS + 1)])
        assert many == [None] * (INLINE_READS + 1) and engine.handed_off == 3  # a bulk check: the worker's
    finally:
        await engine.close()


async def test_a_read_waits_for_the_writes_queued_before_it(tmp_path: Path) -> None:
    async with engine_and_holder(tmp_path, 20_000) as (engine, holder):
        key = {"username": "ordered"}
        await engine.upsert("users", key, {"group_name": "before"})
        holder.execute("BEGIN IMMEDIATE")  # the next write waits on the worker thread
        write = asyncio.create_task(engine.upsert("users", key, {"group_name": "after"}))
        for _ in range(20):
            await asyncio.sleep(0)
        read = asyncio.create_task(engine.get("users", key))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not read.done(), "a read must not overtake the write queued before it"
        holder.execute("COMMIT")
        await write
        assert (await read)["group_name"] == "after"


async def test_a_read_does_not_wait_for_another_process_writing(tmp_path: Path) -> None:
    async with engine_and_holder(tmp_path, 20_000) as (engine, holder):
        key = {"id": uuid.uuid4()}
        await engine.upsert("tags", key, {"tag": "committed"})
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("DELETE FROM tags")  # uncommitted: invisible to the read
        assert (await asyncio.wait_for(engine.get("tags", key), 5))["tag"] == "committed"
        holder.execute("ROLLBACK")


class _BusyReader:
    """Stands in for the inline reader's connection: every statement fails with `error`."""

    def __init__(self, error: str) -> None:
        self.error = error

    def execute(self, *args):
        raise sqlite3.OperationalError(self.error)

    def close(self) -> None:
        pass


async def test_a_busy_inline_read_is_answered_by_the_worker(tmp_path: Path) -> None:
    engine = SQLiteGeoEngine(str(tmp_path / "geodb.sqlite"))
    await engine.open()
    try:
        key = {"id": uuid.uuid4()}
        await engine.upsert("tags", key, {"tag": "found"})
        engine._reader = _BusyReader("database is locked")
        assert (await engine.get("tags", key))["tag"] == "found"
        engine._reader = _BusyReader("disk I/O error")
        with pytest.raises(GeoDBError, match="disk I/O error"):
            await engine.get("tags", key)
    finally:
        await engine.close()


async def test_an_in_memory_database_reads_its_own_tables(tmp_path: Path) -> None:
    engine = SQLiteGeoEngine(":memory:")
    await engine.open()
    try:
        key = {"id": uuid.uuid4()}
        await engine.upsert("tags", key, {"tag": "mem"})
        assert (await engine.get("tags", key))["tag"] == "mem"
    finally:
        await engine.close()
