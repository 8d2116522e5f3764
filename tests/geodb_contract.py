"""The GeoDB engine contract, engine-neutral: every engine must pass these tests unchanged.

An engine's test module provides two fixtures and star-imports this module:

* `engine_spec` -> (driver, options): what `palomar.geodb.open_engine` needs, picklable, so
  that other OS processes can open their own engine on the same store;
* `engine`: an opened engine on that store.

Tests use fresh random keys, so a store shared between tests (a Cassandra keyspace) is fine.
Explicit write timestamps are relative to one `now_micros()` base per test.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from palomar.geodb import GeoDBError, GeoEngine, open_engine
from palomar.geodb.engine import Get, Read, Scan, Select, now_micros
from palomar.geodb.schema import TableDef, clustering_order_key, load_schema, serialize_value

__all__ = [
    "TestRoundTrip",
    "TestSelectAndScan",
    "TestDelete",
    "TestLastWriteWins",
    "TestLightweightTransactions",
    "TestConcurrentProcesses",
    "TestValidation",
]

SCHEMA = load_schema()
NO_ID = uuid.UUID(int=0)
MAX_ID = uuid.UUID(int=2**128 - 1)


def sample_value(ctype: str, variant: int = 0) -> Any:
    """A distinctive value of each CQL type (variant picks another one)."""
    if ctype == "uuid":
        return uuid.uuid4()
    if ctype == "int":
        return [-2_147_483_648, 42, 2_147_483_647, -7][variant % 4]
    if ctype == "double":
        return [0.1 + 0.2, -1.5e300, 3.0, 2.5][variant % 4]
    if ctype == "text":
        return ["grüße ✉ " + uuid.uuid4().hex, "", "plain", "x" * 300][variant % 4]
    if ctype == "timestamp":
        return datetime(2024, 2, 29, 23, 59, 58, 123_000, tzinfo=UTC) + timedelta(days=variant)
    raise AssertionError(ctype)


def full_key(tdef: TableDef, **fixed: Any) -> dict[str, Any]:
    return {c: fixed.get(c, sample_value(tdef.columns[c])) for c in tdef.key_columns}


def partition_of(tdef: TableDef, key: dict[str, Any]) -> dict[str, Any]:
    return {c: key[c] for c in tdef.partition_key}


# ---------------------------------------------------------------------- round trips


class TestRoundTrip:
    @pytest.mark.parametrize("table", sorted(SCHEMA))
    async def test_every_column_round_trips(self, engine: GeoEngine, table: str) -> None:
        tdef = SCHEMA[table]
        key = full_key(tdef)
        values = {c: sample_value(tdef.columns[c], i) for i, c in enumerate(tdef.value_columns)}
        ts = now_micros()
        await engine.upsert(table, key, values, timestamp=ts)

        row = await engine.get(table, key)
        assert row is not None
        assert row.values == {**key, **values}
        for col, value in row.values.items():
            assert type(value) is type({**key, **values}[col]), col
        assert row.writetimes == {c: ts for c in tdef.value_columns}

        selected = await engine.select(table, partition_of(tdef, key))
        assert [r.values for r in selected] == [row.values]
        assert row.values in [r.values for r in await engine.scan(table)]

    @pytest.mark.parametrize("table", sorted(SCHEMA))
    async def test_none_values_are_absent_columns(self, engine: GeoEngine, table: str) -> None:
        tdef = SCHEMA[table]
        key = full_key(tdef)
        first, *rest = tdef.value_columns
        await engine.upsert(table, key, {first: sample_value(tdef.columns[first])} | dict.fromkeys(rest))
        row = await engine.get(table, key)
        assert row is not None
        assert all(row.values[c] is None for c in rest)
        assert row.writetime(first) is not None
        assert all(row.writetime(c) is None for c in rest)

    async def test_upsert_creates_the_row_even_without_values(self, engine: GeoEngine) -> None:
        key = {"id": uuid.uuid4()}
        await engine.upsert("sites", key, {"name": None})
        row = await engine.get("sites", key)
        assert row is not None
        assert row.values["id"] == key["id"]
        assert row.values["name"] is None and row.writetimes == {}

    async def test_missing_row_is_none(self, engine: GeoEngine) -> None:
        assert await engine.get("users", {"username": "nobody-" + uuid.uuid4().hex}) is None
        assert await engine.select("user_sites", {"username": "nobody-" + uuid.uuid4().hex}) == []

    async def test_typed_values_are_canonical(self, engine: GeoEngine) -> None:
        key = {"site_id": uuid.uuid4(), "id": uuid.uuid4(), "key": "cpu"}
        await engine.upsert("backend_stats", key, {"value": 7, "type": "gauge"})
        row = await engine.get("backend_stats", key)
        assert row is not None and row["value"] == 7.0 and isinstance(row["value"], float)

        user = "ts-" + uuid.uuid4().hex
        plus2 = timezone(timedelta(hours=2))
        given = datetime(2025, 1, 2, 3, 4, 5, 678_999, tzinfo=plus2)
        await engine.upsert("users", {"username": user}, {"last_update": given})
        row = await engine.get("users", {"username": user})
        assert row is not None
        assert row["last_update"] == datetime(2025, 1, 2, 1, 4, 5, 678_000, tzinfo=UTC)
        assert row["last_update"].utcoffset() == timedelta(0)

    async def test_uuid_versions_round_trip(self, engine: GeoEngine) -> None:
        ids = [uuid.uuid1(), uuid.uuid4(), uuid.uuid5(uuid.NAMESPACE_DNS, "x"), NO_ID, MAX_ID]
        section = "uuids-" + uuid.uuid4().hex
        for i, ident in enumerate(ids):
            key = {"section": section, "site_id": ident, "backend_id": ident, "setting_name": f"n{i}"}
            await engine.upsert("cluster_settings", key, {"setting_value": str(ident)})
        rows = await engine.select("cluster_settings", {"section": section})
        assert sorted(str(r["site_id"]) for r in rows) == sorted(str(i) for i in ids)
        assert all(r["setting_value"] == str(r["site_id"]) == str(r["backend_id"]) for r in rows)


# ---------------------------------------------------------------------- select / scan


class TestSelectAndScan:
    async def test_select_returns_rows_in_clustering_order(self, engine: GeoEngine) -> None:
        section = "order-" + uuid.uuid4().hex
        named = uuid.uuid5(uuid.NAMESPACE_URL, "")
        sites = [NO_ID, uuid.uuid1(), uuid.uuid1(), uuid.uuid4(), uuid.uuid4(), named]
        names = ["b", "a", "B", "ä", "a2"]
        keys = [
            (s, b, n)
            for s in sites[:4]
            for b in (NO_ID, sites[4], sites[5])
            for n in random.sample(names, 2)
        ]
        random.shuffle(keys)
        for s, b, n in keys:
            key = {"section": section, "site_id": s, "backend_id": b, "setting_name": n}
            await engine.upsert("cluster_settings", key, {"setting_value": f"{s}/{b}/{n}"})

        def order(k: tuple[uuid.UUID, uuid.UUID, str]) -> tuple[Any, ...]:
            return (clustering_order_key("uuid", k[0]), clustering_order_key("uuid", k[1]), k[2].encode())

        expected = sorted(set(keys), key=order)
        rows = await engine.select("cluster_settings", {"section": section})
        assert [(r["site_id"], r["backend_id"], r["setting_name"]) for r in rows] == expected

        one_site = sites[1]
        rows = await engine.select("cluster_settings", {"section": section}, (one_site,))
        assert [(r["site_id"], r["backend_id"], r["setting_name"]) for r in rows] == [
            k for k in expected if k[0] == one_site
        ]
        rows = await engine.select("cluster_settings", {"section": section}, [one_site, NO_ID])
        assert [(r["site_id"], r["backend_id"], r["setting_name"]) for r in rows] == [
            k for k in expected if k[0] == one_site and k[1] == NO_ID
        ]

    async def test_uuid_order_is_time_order_for_time_uuids(self, engine: GeoEngine) -> None:
        src = uuid.uuid4()
        base = uuid.uuid1()
        dests = [uuid.UUID(fields=(base.time_low, base.time_mid, base.time_hi_version, 0x80, 0, n))
                 for n in range(3)]
        later = uuid.UUID(int=base.int + (1 << 96))  # time_low + 1: a later v1 uuid
        for d in [later, *dests]:
            key = {"src_site_id": src, "dest_site_id": d}
            await engine.upsert("site_reachability", key, {"reachable": 1})
        rows = await engine.select("site_reachability", {"src_site_id": src})
        assert [r["dest_site_id"] for r in rows] == [*dests, later]

    async def test_text_clustering_orders_by_utf8_bytes(self, engine: GeoEngine) -> None:
        site = uuid.uuid4()
        hosts = ["zeta", "Zeta", "äther", "alpha", "alpha-2", ""]
        for h in hosts:
            key = {"proxy_site_id": site, "dest_host": h, "proxy_host": "p1", "key": "ok"}
            await engine.upsert("proxy_dest_stats", key, {"value": 1.0, "type": "counter"})
        rows = await engine.select("proxy_dest_stats", {"proxy_site_id": site})
        assert [r["dest_host"] for r in rows] == sorted(hosts, key=lambda h: h.encode())

    async def test_select_is_limited_to_its_partition(self, engine: GeoEngine) -> None:
        user_a, user_b = "a-" + uuid.uuid4().hex, "b-" + uuid.uuid4().hex
        s1, s2 = uuid.uuid4(), uuid.uuid4()
        await engine.upsert("user_sites", {"username": user_a, "site_id": s1}, {"preferred_site": 1})
        await engine.upsert("user_sites", {"username": user_a, "site_id": s2}, {"preferred_site": 0})
        await engine.upsert("user_sites", {"username": user_b, "site_id": s1}, {"preferred_site": 1})
        rows = await engine.select("user_sites", {"username": user_a})
        assert {r["site_id"] for r in rows} == {s1, s2}
        assert {r["username"] for r in rows} == {user_a}
        assert await engine.select("user_sites", {"username": user_a}, (uuid.uuid4(),)) == []

    async def test_read_many_answers_as_the_single_reads_do(self, engine: GeoEngine) -> None:
        site, gone, missing = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        user = "rm-" + uuid.uuid4().hex
        await engine.upsert("sites", {"id": site}, {"name": "rm-site", "status": "online"})
        await engine.upsert("sites", {"id": gone}, {"name": "gone"})
        await engine.delete("sites", {"id": gone})
        backends = [uuid.uuid4() for _ in range(3)]
        for i, backend in enumerate(backends):
            await engine.upsert("backends", {"site_id": site, "id": backend}, {"host": f"h{i}"})
        await engine.upsert("users", {"username": user}, {"group_name": "g7"})
        await engine.upsert("user_sites", {"username": user, "site_id": site}, {"preferred_site": 1})
        reads: list[Read] = [
            Get("sites", {"id": site}),
            Select("backends", {"site_id": site}),
            Get("users", {"username": user}),
            Get("sites", {"id": gone}),
            Get("sites", {"id": missing}),
            Select("backends", {"site_id": missing}),
            Select("user_sites", {"username": user}, (site,)),
            Scan("sites"),
        ]
        answers = await engine.read_many(reads)
        singles = [await engine.get(r.table, r.key) if isinstance(r, Get) else await engine.scan(r.table)
                   if isinstance(r, Scan) else await engine.select(r.table, r.partition, r.clustering)
                   for r in reads]
        assert answers == singles
        assert answers[0]["name"] == "rm-site" and answers[2]["group_name"] == "g7"
        assert sorted(r["host"] for r in answers[1]) == ["h0", "h1", "h2"]  # order: as `select`, compared above
        assert answers[3] is None and answers[4] is None and answers[5] == []
        assert [r["preferred_site"] for r in answers[6]] == [1]
        assert site in {r["id"] for r in answers[7]} and gone not in {r["id"] for r in answers[7]}
        assert await engine.read_many([]) == []

    async def test_scan_lists_live_rows_only(self, engine: GeoEngine) -> None:
        ids = [uuid.uuid4() for _ in range(4)]
        for i, ident in enumerate(ids):
            await engine.upsert("tags", {"id": ident}, {"tag": f"tag-{i}"})
        await engine.delete("tags", {"id": ids[0]})
        scanned = {r["id"]: r["tag"] for r in await engine.scan("tags")}
        assert ids[0] not in scanned
        assert {i: scanned[i] for i in ids[1:]} == {ids[1]: "tag-1", ids[2]: "tag-2", ids[3]: "tag-3"}


# ---------------------------------------------------------------------- deletes


class TestDelete:
    async def test_row_delete(self, engine: GeoEngine) -> None:
        site = uuid.uuid4()
        b1, b2 = uuid.uuid4(), uuid.uuid4()
        for b in (b1, b2):
            key = {"site_id": site, "id": b}
            await engine.upsert("backends", key, {"host": f"h-{b}", "status": "online"})
        await engine.delete("backends", {"site_id": site, "id": b1})
        assert await engine.get("backends", {"site_id": site, "id": b1}) is None
        assert [r["id"] for r in await engine.select("backends", {"site_id": site})] == [b2]

    async def test_partition_delete(self, engine: GeoEngine) -> None:
        site, other = uuid.uuid4(), uuid.uuid4()
        for s in (site, other):
            for n in ("g1", "g2", "g3"):
                await engine.upsert("user_groups", {"site_id": s, "name": n}, {"backend_id": uuid.uuid4()})
        await engine.delete("user_groups", {"site_id": site})
        assert await engine.select("user_groups", {"site_id": site}) == []
        rows = await engine.select("user_groups", {"site_id": other})
        assert [r["name"] for r in rows] == ["g1", "g2", "g3"]

    async def test_row_delete_shadows_older_and_equal_writes(self, engine: GeoEngine) -> None:
        key = {"username": "del-" + uuid.uuid4().hex}
        t = now_micros()
        await engine.upsert("users", key, {"group_name": "g", "metacache_last_host": "b1"}, timestamp=t)
        await engine.delete("users", key, timestamp=t + 10)
        await engine.upsert("users", key, {"group_name": "late-but-old"}, timestamp=t + 5)
        await engine.upsert("users", key, {"group_name": "same-time"}, timestamp=t + 10)
        assert await engine.get("users", key) is None

    async def test_newer_write_revives_only_its_columns(self, engine: GeoEngine) -> None:
        key = {"username": "revive-" + uuid.uuid4().hex}
        t = now_micros()
        await engine.upsert("users", key, {"group_name": "g", "metacache_last_host": "b1"}, timestamp=t)
        await engine.delete("users", key, timestamp=t + 10)
        await engine.upsert("users", key, {"metacache_last_host": "b2"}, timestamp=t + 11)
        row = await engine.get("users", key)
        assert row is not None
        assert row["metacache_last_host"] == "b2" and row["group_name"] is None
        assert row.writetimes == {"metacache_last_host": t + 11}

    async def test_delete_arriving_late_still_wins_over_older_writes(self, engine: GeoEngine) -> None:
        key = {"id": uuid.uuid4()}
        t = now_micros()
        await engine.upsert("sites", key, {"name": "old"}, timestamp=t)
        await engine.upsert("sites", key, {"status": "newer"}, timestamp=t + 20)
        await engine.delete("sites", key, timestamp=t + 10)
        row = await engine.get("sites", key)
        assert row is not None
        assert row["name"] is None and row["status"] == "newer"

    async def test_partition_delete_shadows_older_writes_to_any_row(self, engine: GeoEngine) -> None:
        group = "pd-" + uuid.uuid4().hex
        s1, s2 = uuid.uuid4(), uuid.uuid4()
        t = now_micros()
        await engine.upsert("group_sites", {"group_name": group, "site_id": s1}, {"status": 1}, timestamp=t)
        await engine.delete("group_sites", {"group_name": group}, timestamp=t + 10)
        # a row that did not exist at delete time, written with an older timestamp: hidden too
        row2 = {"group_name": group, "site_id": s2}
        await engine.upsert("group_sites", row2, {"status": 2}, timestamp=t + 9)
        assert await engine.select("group_sites", {"group_name": group}) == []
        await engine.upsert("group_sites", row2, {"status": 3}, timestamp=t + 11)
        rows = await engine.select("group_sites", {"group_name": group})
        assert [(r["site_id"], r["status"], r["failover_site_id"]) for r in rows] == [(s2, 3, None)]

    async def test_delete_of_missing_row_shadows_later_older_write(self, engine: GeoEngine) -> None:
        key = {"id": uuid.uuid4()}
        t = now_micros()
        await engine.delete("tags", key, timestamp=t)
        await engine.upsert("tags", key, {"tag": "ghost"}, timestamp=t - 1)
        assert await engine.get("tags", key) is None


# ---------------------------------------------------------------------- last write wins


class TestLastWriteWins:
    async def test_older_write_loses_per_column(self, engine: GeoEngine) -> None:
        key = {"site_id": uuid.uuid4(), "id": uuid.uuid4()}
        t = now_micros()
        await engine.upsert("backends", key, {"status": "online", "host": "a.example"}, timestamp=t + 20)
        await engine.upsert("backends", key, {"status": "offline", "load_factor": 50}, timestamp=t + 10)
        row = await engine.get("backends", key)
        assert row is not None
        assert (row["status"], row["host"], row["load_factor"]) == ("online", "a.example", 50)
        assert row.writetimes == {"status": t + 20, "host": t + 20, "load_factor": t + 10}

        await engine.upsert("backends", key, {"status": "standby"}, timestamp=t + 30)
        row = await engine.get("backends", key)
        assert row is not None
        assert (row["status"], row.writetime("status"), row["host"]) == ("standby", t + 30, "a.example")

    async def test_none_deletes_a_column_by_time_too(self, engine: GeoEngine) -> None:
        key = {"site_id": uuid.uuid4(), "name": "g"}
        t = now_micros()
        await engine.upsert("user_groups", key, {"moving": "m1", "refresh_after": 5}, timestamp=t)
        await engine.upsert("user_groups", key, {"moving": None}, timestamp=t + 2)
        await engine.upsert("user_groups", key, {"moving": "stale"}, timestamp=t + 1)
        row = await engine.get("user_groups", key)
        assert row is not None
        assert row["moving"] is None and row.writetime("moving") is None
        assert row["refresh_after"] == 5
        await engine.upsert("user_groups", key, {"refresh_after": None}, timestamp=t - 1)
        row = await engine.get("user_groups", key)
        assert row is not None and row["refresh_after"] == 5

    @pytest.mark.parametrize(
        ("column", "a", "b"),
        [
            ("group_name", "alpha", "beta"),
            ("group_name", "beta", "alpha"),
            ("metacache_last_host", "h1", None),
            ("metacache_last_host", None, "h1"),
            ("preferred_site_id", uuid.UUID(int=5), uuid.UUID(int=7)),
        ],
    )
    async def test_equal_timestamps_resolve_deterministically(
        self, engine: GeoEngine, column: str, a: Any, b: Any
    ) -> None:
        ctype = SCHEMA["users"].columns[column]
        # a tombstone beats a value written at the same time; between values the greater bytes win
        expected = None if a is None or b is None else max(a, b, key=lambda v: serialize_value(ctype, v))
        t = now_micros()
        for first, second in ((a, b), (b, a)):
            key = {"username": "tie-" + uuid.uuid4().hex}
            await engine.upsert("users", key, {column: first}, timestamp=t)
            await engine.upsert("users", key, {column: second}, timestamp=t)
            row = await engine.get("users", key)
            assert row is not None
            assert row.values[column] == expected

    async def test_replayed_write_is_idempotent(self, engine: GeoEngine) -> None:
        key = {"src_site_id": uuid.uuid4(), "dest_site_id": uuid.uuid4()}
        t = now_micros()
        for _ in range(3):
            await engine.upsert("site_reachability", key, {"reachable": 1}, timestamp=t)
        row = await engine.get("site_reachability", key)
        assert row is not None and row["reachable"] == 1 and row.writetime("reachable") == t

    async def test_default_write_time_is_now(self, engine: GeoEngine) -> None:
        before = now_micros()
        key = {"id": uuid.uuid4()}
        await engine.upsert("tags", key, {"tag": "t"})
        after = now_micros()
        row = await engine.get("tags", key)
        assert row is not None
        assert before <= row.writetime("tag") <= after


# ---------------------------------------------------------------------- lightweight transactions


class TestLightweightTransactions:
    async def test_insert_if_absent(self, engine: GeoEngine) -> None:
        key = {"site_id": uuid.uuid4(), "name": "default-1"}
        backend = uuid.uuid4()
        first = await engine.insert_if_absent("user_groups", key, {"backend_id": backend, "sticky_users": 0})
        assert first.applied
        assert first.row["backend_id"] == backend and first.row["name"] == "default-1"
        second = await engine.insert_if_absent("user_groups", key, {"backend_id": uuid.uuid4()})
        assert not second.applied
        assert second.row["backend_id"] == backend and second.row["sticky_users"] == 0
        stored = await engine.get("user_groups", key)
        assert stored is not None and stored["backend_id"] == backend

    async def test_insert_if_absent_after_delete(self, engine: GeoEngine) -> None:
        key = {"id": uuid.uuid4()}
        assert (await engine.insert_if_absent("tags", key, {"tag": "one"})).applied
        await engine.delete("tags", key)
        result = await engine.insert_if_absent("tags", key, {"tag": "two"})
        assert result.applied
        row = await engine.get("tags", key)
        assert row is not None and row["tag"] == "two"

    async def test_insert_if_absent_with_no_values_creates_the_row(self, engine: GeoEngine) -> None:
        key = {"username": "empty-" + uuid.uuid4().hex}
        assert (await engine.insert_if_absent("users", key, {})).applied
        assert await engine.get("users", key) is not None
        assert not (await engine.insert_if_absent("users", key, {"group_name": "g"})).applied

    async def test_update_if_compare_and_set(self, engine: GeoEngine) -> None:
        site = uuid.uuid4()
        a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        key = {"site_id": site, "name": "g"}
        await engine.insert_if_absent("user_groups", key, {"backend_id": a, "moving": None})

        moved = await engine.update_if(
            "user_groups", key, {"alt_backend_id": b, "moving": "m"}, {"moving": None}
        )
        assert moved.applied
        assert (moved.row["alt_backend_id"], moved.row["moving"]) == (b, "m")

        again = await engine.update_if(
            "user_groups", key, {"alt_backend_id": c, "moving": "m2"}, {"moving": None}
        )
        assert not again.applied
        assert again.row["moving"] == "m" and again.row["alt_backend_id"] == b

        done = await engine.update_if(
            "user_groups", key, {"backend_id": b, "alt_backend_id": a, "moving": None},
            {"backend_id": a, "moving": "m"},
        )
        assert done.applied
        row = await engine.get("user_groups", key)
        assert row is not None
        assert (row["backend_id"], row["alt_backend_id"], row["moving"]) == (b, a, None)

    async def test_update_if_on_missing_row_with_value_condition_fails(self, engine: GeoEngine) -> None:
        key = {"username": "ghost-" + uuid.uuid4().hex}
        result = await engine.update_if("users", key, {"group_name": "g2"}, {"group_name": "g1"})
        assert not result.applied
        assert await engine.get("users", key) is None

    async def test_insert_race_between_tasks_and_engines(self, engine: GeoEngine, engine_spec: Any) -> None:
        engines = [engine] + [open_engine(engine_spec[0], **engine_spec[1]) for _ in range(3)]
        for e in engines[1:]:
            await e.open()
        try:
            key = {"username": "race-" + uuid.uuid4().hex}
            contenders = [(engines[i % len(engines)], f"group-{i}") for i in range(40)]
            results = await asyncio.gather(
                *(e.insert_if_absent("users", key, {"group_name": g}) for e, g in contenders)
            )
        finally:
            for e in engines[1:]:
                await e.close()
        winners = [r for r in results if r.applied]
        assert len(winners) == 1
        winner = winners[0].row["group_name"]
        assert {r.row["group_name"] for r in results} == {winner}
        row = await engine.get("users", key)
        assert row is not None and row["group_name"] == winner

    async def test_concurrent_compare_and_set_loses_no_update(self, engine: GeoEngine) -> None:
        key = {"site_id": uuid.uuid4(), "id": uuid.uuid4()}
        await engine.insert_if_absent("backends", key, {"move_counter_cur": 0})

        async def increment() -> None:
            while True:
                row = await engine.get("backends", key)
                assert row is not None
                cur = row["move_counter_cur"]
                if (await engine.update_if("backends", key, {"move_counter_cur": cur + 1},
                                           {"move_counter_cur": cur})).applied:
                    return

        await asyncio.gather(*(increment() for _ in range(25)))
        row = await engine.get("backends", key)
        assert row is not None and row["move_counter_cur"] == 25


# ---------------------------------------------------------------------- several OS processes


def _process_main(
    target: Callable[..., Any], spec: Any, args: tuple[Any, ...], barrier: Any, queue: Any
) -> None:
    """Child process: open an own engine on the shared store, line up, run `target`, report."""

    async def main() -> Any:
        engine = open_engine(spec[0], **spec[1])
        await engine.open()
        try:
            barrier.wait(timeout=120)
            return await target(engine, *args)
        finally:
            await engine.close()

    try:
        queue.put(("ok", asyncio.run(main())))
    except BaseException as exc:  # reported to the parent, which fails the test with it
        queue.put(("error", repr(exc)))


def run_in_processes(
    target: Callable[..., Any], spec: Any, args_per_process: list[tuple[Any, ...]]
) -> list[Any]:
    """Run `target(engine, *args)` in one fresh process per args tuple, all released at once."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    barrier = ctx.Barrier(len(args_per_process))
    procs = [
        ctx.Process(target=_process_main, args=(target, spec, a, barrier, queue)) for a in args_per_process
    ]
    for p in procs:
        p.start()
    try:
        outcomes = [queue.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert not errors, errors
    assert all(p.exitcode == 0 for p in procs)
    return [detail for _, detail in outcomes]


async def _race_insert(engine: GeoEngine, key: dict[str, Any], value: str) -> tuple[bool, str]:
    result = await engine.insert_if_absent("users", key, {"group_name": value})
    return result.applied, result.row["group_name"]


async def _cas_increments(engine: GeoEngine, key: dict[str, Any], count: int) -> int:
    retries = 0
    for _ in range(count):
        while True:
            row = await engine.get("backends", key)
            cur = row["move_counter_cur"]
            if (await engine.update_if("backends", key, {"move_counter_cur": cur + 1},
                                       {"move_counter_cur": cur})).applied:
                break
            retries += 1
    return retries


async def _write_versions(engine: GeoEngine, site: uuid.UUID, writes: list[tuple[Any, ...]]) -> int:
    for backend, column, value, ts in writes:
        await engine.upsert("backends", {"site_id": site, "id": backend}, {column: value}, timestamp=ts)
    return len(writes)


class TestConcurrentProcesses:
    async def test_insert_if_absent_race_across_processes(self, engine: GeoEngine, engine_spec: Any) -> None:
        key = {"username": "prace-" + uuid.uuid4().hex}
        args = [(key, f"group-of-process-{i}") for i in range(6)]
        results = await asyncio.to_thread(run_in_processes, _race_insert, engine_spec, args)
        winners = [value for applied, value in results if applied]
        assert len(winners) == 1
        assert {value for _, value in results} == {winners[0]}
        row = await engine.get("users", key)
        assert row is not None and row["group_name"] == winners[0]

    async def test_compare_and_set_across_processes(self, engine: GeoEngine, engine_spec: Any) -> None:
        key = {"site_id": uuid.uuid4(), "id": uuid.uuid4()}
        assert (await engine.insert_if_absent("backends", key, {"move_counter_cur": 0})).applied
        await asyncio.to_thread(run_in_processes, _cas_increments, engine_spec, [(key, 15)] * 4)
        row = await engine.get("backends", key)
        assert row is not None and row["move_counter_cur"] == 60

    async def test_concurrent_writers_converge_on_newest_timestamp(
        self, engine: GeoEngine, engine_spec: Any
    ) -> None:
        site = uuid.uuid4()
        backends = [uuid.uuid4() for _ in range(8)]
        nproc = 4
        base = now_micros()
        rng = random.Random(7)
        plans: list[list[tuple[Any, ...]]] = [[] for _ in range(nproc)]
        newest: dict[tuple[uuid.UUID, str], tuple[int, str]] = {}
        for b in backends:
            for column in ("host", "status"):
                stamps = rng.sample(range(1, 1000), nproc)  # distinct: a unique newest write
                for p in range(nproc):
                    value = f"{column}-from-{p}"
                    plans[p].append((b, column, value, base + stamps[p]))
                    if (b, column) not in newest or base + stamps[p] > newest[(b, column)][0]:
                        newest[(b, column)] = (base + stamps[p], value)
        for plan in plans:
            rng.shuffle(plan)
        args = [(site, plan) for plan in plans]
        await asyncio.to_thread(run_in_processes, _write_versions, engine_spec, args)

        rows = {r["id"]: r for r in await engine.select("backends", {"site_id": site})}
        assert set(rows) == set(backends)
        for (b, column), (ts, value) in newest.items():
            assert rows[b][column] == value
            assert rows[b].writetime(column) == ts


# ---------------------------------------------------------------------- validation


def _backend_key() -> dict[str, Any]:
    return {"site_id": uuid.uuid4(), "id": uuid.uuid4()}


def _stat_key() -> dict[str, Any]:
    return {"site_id": uuid.uuid4(), "id": uuid.uuid4(), "key": "k"}


class TestValidation:
    @pytest.mark.parametrize(
        ("call", "message"),
        [
            (lambda e: e.get("no_such_table", {"id": uuid.uuid4()}), "unknown GeoDB table"),
            (lambda e: e.upsert("sites", {"id": uuid.uuid4()}, {"colour": "red"}), "unknown column 'colour'"),
            (lambda e: e.get("sites", {"id": uuid.uuid4(), "nope": 1}), "unknown column 'nope'"),
            (lambda e: e.get("backends", {"site_id": uuid.uuid4()}), "missing key column 'id'"),
            (lambda e: e.upsert("sites", {}, {"name": "x"}), "missing key column 'id'"),
            (lambda e: e.get("sites", {"id": str(uuid.uuid4())}), "expected uuid, got str"),
            (lambda e: e.upsert("backends", _backend_key(), {"load_factor": "9"}), "expected int, got str"),
            (lambda e: e.upsert("backends", _backend_key(), {"load_factor": True}), "expected int, got bool"),
            (lambda e: e.upsert("backends", _backend_key(), {"load_factor": 2**31}), "32-bit range"),
            (lambda e: e.upsert("backend_stats", _stat_key(), {"value": "1.5"}), "expected double, got str"),
            (lambda e: e.upsert("users", {"username": "u"}, {"last_update": datetime(2024, 1, 1)}),
             "timezone-aware"),
            (lambda e: e.upsert("users", {"username": "u"}, {"username": "v"}), "is a key column"),
            (lambda e: e.upsert("users", {"username": None}, {}), "cannot be None"),
            (lambda e: e.select("backends", {}), "full partition key is required"),
            (lambda e: e.select("backends", {"id": uuid.uuid4()}), "not a partition key column"),
            (lambda e: e.select("proxy_dest_stats", {"proxy_site_id": uuid.uuid4(), "dest_host": "h"}),
             "not a partition key column"),
            (lambda e: e.select("user_sites", {"username": "u"}, (uuid.uuid4(), 1)), "prefix has 2"),
            (lambda e: e.select("user_sites", {"username": "u"}, ("not-a-uuid",)), "expected uuid"),
            (lambda e: e.delete("backend_stats", {"site_id": uuid.uuid4(), "id": uuid.uuid4()}),
             "full primary key"),
            (lambda e: e.upsert("tags", {"id": uuid.uuid4()}, {"tag": "t"}, timestamp="now"),
             "timestamp must be an int"),
            (lambda e: e.update_if("tags", {"id": uuid.uuid4()}, {"tag": "t"}, {}), "at least one expected"),
            (lambda e: e.insert_if_absent("tags", {"id": uuid.uuid4()}, [("tag", "t")]), "must be a mapping"),
            (lambda e: e.read_many([Get("sites", {"id": uuid.uuid4()}), Get("no_such_table", {"id": 1})]),
             "unknown GeoDB table"),
            (lambda e: e.read_many([Select("backends", {"id": uuid.uuid4()})]), "not a partition key column"),
        ],
    )
    async def test_bad_calls_raise_clear_errors(self, engine: GeoEngine, call: Any, message: str) -> None:
        with pytest.raises(GeoDBError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await call(engine)

    async def test_rejected_write_changes_nothing(self, engine: GeoEngine) -> None:
        key = {"id": uuid.uuid4()}
        await engine.upsert("sites", key, {"name": "kept"})
        with pytest.raises(GeoDBError):
            await engine.upsert("sites", key, {"name": "new", "bogus": 1})
        row = await engine.get("sites", key)
        assert row is not None and row["name"] == "kept"
