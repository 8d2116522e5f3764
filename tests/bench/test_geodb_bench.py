"""bench/geodb_bench.py on the SQLite engine: what "cold" and "warm" mean, and the report it writes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geodb_bench import ExpiredCache, Result, bench_engine, populate, report, usernames
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB
from palomar.proxy.router import Router


class CountingEngine:
    """An engine wrapper counting the reads that reach the GeoDB."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.engine, name)
        if name not in ("get", "select", "scan", "read_many"):
            return attr

        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return await attr(*args, **kwargs)

        return counted


def test_expired_cache_finds_nothing_and_writes_through(tmp_path: Path) -> None:
    with LocalDB(str(tmp_path / "localdb.sqlite")) as db:
        db.cache_put("user/a", "cached", 3600)
        cache = ExpiredCache(db)
        assert cache.cache_get("user/a") is None
        assert db.cache_get("user/a") is None, "an expired read purges the entry, as a real expiry does"
        cache.cache_put("user/b", "fresh", 3600)
        assert db.cache_get("user/b") == "fresh"


async def test_cold_lookups_read_the_geodb_and_warm_ones_do_not(tmp_path: Path) -> None:
    engine = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"))
    await engine.open()
    counting = CountingEngine(engine)
    try:
        db = GeoDB(counting)  # type: ignore[arg-type]
        await populate(db, users=40, groups=5, backends=2)
        names = usernames(40)[:10]
        with LocalDB(str(tmp_path / "localdb.sqlite")) as localdb:
            cold = Router(db, ExpiredCache(localdb), site_name="DC1", group_count=5)
            warm = Router(db, localdb, site_name="DC1", group_count=5, cache_ttl=3600)
            counting.reads = 0
            hosts = {(await cold.route(n)).host for n in names}
            # every time: site, backends, the sites and their reachability (one read_many), user,
            # the home group's group_sites row, group
            assert counting.reads == 6 * len(names)
            assert hosts <= {"10.0.0.1", "10.0.0.2"} and None not in hosts
            for n in names:
                await warm.route(n)
            counting.reads = 0
            assert {(await warm.route(n)).host for n in names} == hosts
            assert counting.reads == 0
    finally:
        await engine.close()


async def test_a_small_run_reports_every_mode(tmp_path: Path) -> None:
    args = argparse.Namespace(users=60, groups=4, backends=2, cold_lookups=30, warm_lookups=50, concurrency=3,
                              warm_sample=0)
    results = await bench_engine("sqlite", open_engine("sqlite", path=str(tmp_path / "g.sqlite")), args, tmp_path)
    assert [(r.mode, r.concurrency, r.lookups) for r in results] == [
        ("cold", 1, 30), ("cold", 3, 30), ("LocalDB-warm", 1, 50), ("LocalDB-warm", 3, 50)]
    assert all(len(r.latencies) == r.lookups and r.seconds > 0 for r in results)
    text = report(results, args, ("0.1", "0.2"))
    assert "| sqlite | cold | 1 | 30 |" in text and "| sqlite | LocalDB-warm | 3 | 50 |" in text
    assert "per query on sqlite" in text


def test_result_row_formats_percentiles_and_rate() -> None:
    row = Result("x", "cold", 1, 4, 2.0, [0.001, 0.002, 0.003, 0.010]).row()
    assert row == ["x", "cold", 1, 4, "2.00", "10.00", "2"]
