"""GeoDB routing lookups (issue 8): the proxy's `Router.route(user)` on SQLite and on Cassandra.

A GeoDB with one site, `--backends` online backends, `--groups` groups spread over them and
`--users` users, each already placed in a group (the state after their first login). Then
`Router.route()` for randomly chosen users, in two modes:

* cold: every LocalDB cache entry has expired, so each lookup reads the GeoDB (the site, its
  backends, the user, the group: four queries) and refreshes the cache, as a proxy does after
  `cluster_geodb_cache` entries time out;
* warm: the LocalDB cache holds everything, so a lookup is three LocalDB (SQLite) reads.

Each mode runs one lookup at a time (latency) and `--concurrency` lookups in flight (one event
loop, as in a proxy process). Cassandra is the local single node of `scripts/cassandra`
(started for the run if nothing answers on 127.0.0.1:9042, and stopped again afterwards).
Results replace the `## GeoDB routing lookups (issue 8)` section of docs/benchmarks.md.

    .venv/bin/python bench/geodb_bench.py                  # both engines, about 2-3 minutes
    .venv/bin/python bench/geodb_bench.py --engines sqlite --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palomar.cluster.hashing import default_group_name
from palomar.cluster.model import Backend, Group, Site
from palomar.devcluster.cassandra import CassandraError, LocalCassandra, reset_keyspace
from palomar.geodb import GeoDBError, GeoEngine, open_engine
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB
from palomar.proxy.router import Router
from report import load_average, log, machine_rows, percentile, table, write_section

HEADING = "GeoDB routing lookups (issue 8)"
SITE = "DC1"
KEYSPACE = "bench_routing"
FAR_FUTURE = 10**9
"""Seconds added to the clock of cache reads in cold mode: every cached entry counts as expired."""


class ExpiredCache:
    """The proxy's LocalDB cache as it is once every entry has timed out: each read finds the
    entry expired (and purges it, as a real expiry does), each refresh writes it back."""

    def __init__(self, db: LocalDB) -> None:
        self.db = db

    def cache_get(self, key: str, now: int | None = None) -> str | None:
        return self.db.cache_get(key, int(time.time()) + FAR_FUTURE)

    def cache_put(self, key: str, value: str, ttl_secs: int, now: int | None = None) -> None:
        self.db.cache_put(key, value, ttl_secs, now)

    def cache_delete(self, key: str) -> bool:
        return self.db.cache_delete(key)


@dataclass
class Result:
    engine: str
    mode: str
    concurrency: int
    lookups: int
    seconds: float
    latencies: list[float]

    def row(self) -> list[object]:
        ms = [x * 1000 for x in self.latencies]
        return [self.engine, self.mode, self.concurrency, self.lookups, f"{percentile(ms, 50):.2f}",
                f"{percentile(ms, 99):.2f}", f"{self.lookups / self.seconds:,.0f}"]


def usernames(count: int) -> list[str]:
    return [f"user{i}@example.test" for i in range(1, count + 1)]


async def populate(db: GeoDB, users: int, groups: int, backends: int) -> None:
    """One site, online backends, groups round-robin over them, every user in its default group."""
    site = Site(uuid.uuid4(), SITE)
    await db.site_add(site)
    nodes = [Backend(uuid.uuid4(), site.id, f"10.0.0.{i + 1}", status="online") for i in range(backends)]
    for node in nodes:
        await db.backend_add(node)
    limit = asyncio.Semaphore(64)

    async def bounded(work: Awaitable[Any]) -> None:
        async with limit:
            await work

    await asyncio.gather(*(bounded(db.group_create_if_absent(Group(
        site.id, f"default-{g}", backend_id=nodes[g % backends].id, alt_backend_id=nodes[(g + 1) % backends].id)))
        for g in range(1, groups + 1)))
    names = usernames(users)
    for start in range(0, users, 1000):
        await db.users_put_many([(name, {"group_name": default_group_name(name, groups)})
                                 for name in names[start:start + 1000]])


async def measure(route: Callable[[str], Awaitable[Any]], names: list[str], concurrency: int) -> tuple[float, list[float]]:
    """Route every name, `concurrency` at a time; the total seconds and each lookup's latency."""
    latencies: list[float] = []
    queue = iter(names)

    async def worker() -> None:
        for name in queue:
            started = time.perf_counter()
            result = await route(name)
            latencies.append(time.perf_counter() - started)
            if result.host is None:
                raise RuntimeError(f"routing {name} failed: {result.reason}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def bench_engine(name: str, engine: GeoEngine, args: argparse.Namespace, work: Path) -> list[Result]:
    await engine.open()
    try:
        db = GeoDB(engine)
        started = time.monotonic()
        await populate(db, args.users, args.groups, args.backends)
        log(f"{name}: {args.users} users, {args.groups} groups, {args.backends} backends written in "
            f"{time.monotonic() - started:.1f}s")
        rng = random.Random(8)
        everyone = usernames(args.users)
        localdb = LocalDB(str(work / f"localdb-{name}.sqlite"))
        results = []
        try:
            cold = Router(db, ExpiredCache(localdb), site_name=SITE, group_count=args.groups)
            warm = Router(db, localdb, site_name=SITE, group_count=args.groups, cache_ttl=3600)
            await measure(cold.route, [rng.choice(everyone) for _ in range(1000)], 4)  # prepare, JIT, pages
            for concurrency in (1, args.concurrency):
                names = [rng.choice(everyone) for _ in range(args.cold_lookups)]
                seconds, latencies = await measure(cold.route, names, concurrency)
                results.append(Result(name, "cold", concurrency, len(names), seconds, latencies))
                log(f"{name}: cold, concurrency {concurrency}: {len(names) / seconds:,.0f} lookups/s")
            cached = everyone[:args.warm_sample] if args.warm_sample else everyone
            await measure(warm.route, cached, args.concurrency)  # fills the cache with these users
            for concurrency in (1, args.concurrency):
                names = [rng.choice(cached) for _ in range(args.warm_lookups)]
                seconds, latencies = await measure(warm.route, names, concurrency)
                results.append(Result(name, "LocalDB-warm", concurrency, len(names), seconds, latencies))
                log(f"{name}: warm, concurrency {concurrency}: {len(names) / seconds:,.0f} lookups/s")
        finally:
            localdb.close()
        return results
    finally:
        await engine.close()


def cassandra_version() -> str:
    from palomar.devcluster.cassandra import SCRIPT

    jars = sorted((Path.home() / ".cache" / "palomar" / "cassandra" / "lib").glob("cassandra-all-*.jar"))
    if jars:
        return jars[-1].name.removeprefix("cassandra-all-").removesuffix(".jar")
    return f"unknown (see {SCRIPT.name})"


def report(results: list[Result], args: argparse.Namespace, loads: tuple[str, str]) -> str:
    headers = ["engine", "mode", "concurrency", "lookups", "p50 ms", "p99 ms", "lookups/s"]
    machine = table(["", ""], [*machine_rows(), ("Cassandra", f"{cassandra_version()}, one local node, heap 768M"),
                              ("load average before / after", f"{loads[0]} / {loads[1]}")])
    return f"""Written by `bench/geodb_bench.py` (`.venv/bin/python bench/geodb_bench.py`).

`Router.route(user)` of the proxy over a GeoDB with {args.users:,} users in {args.groups} groups on
{args.backends} online backends (one site). **cold**: every LocalDB cache entry has expired, so a lookup
makes six GeoDB reads (site, backends, the sites and their reachability, user, the group's
group_sites row, group) and rewrites the cache; **LocalDB-warm**: all cached, LocalDB reads only
and no GeoDB access. Latency is per lookup; "concurrency" lookups are in
flight at once on one event loop, as in a proxy process. SQLite is the embedded engine (a file on
local disk); Cassandra is a single local node at `local-one` reads, client and server sharing the
two cores, so its numbers are a floor for network round trips, not a cluster's capacity.

{table(headers, [r.row() for r in results])}

{machine}

{reading(results)}
"""


def reading(results: list[Result]) -> str:
    """What the table says, from its own numbers."""
    cold = {r.engine: r for r in results if r.mode == "cold" and r.concurrency == 1}
    busy = {r.engine: r for r in results if r.mode == "cold" and r.concurrency > 1}
    lines = ["Reading the numbers: a cold lookup is four GeoDB queries one after the other (the site by name"
             " is a scan of the small `sites` table),"]
    per_query = [f"{percentile(cold[e].latencies, 50) * 1000 / 4:.2f} ms per query on {e}" for e in cold]
    lines.append("about " + " and ".join(per_query) + " at p50 here.")
    if "cassandra" in busy:
        lines.append(f"With {busy['cassandra'].concurrency} lookups in flight Cassandra reaches "
                     f"{busy['cassandra'].lookups / busy['cassandra'].seconds:,.0f} lookups/s: the driver's I/O"
                     " thread, the event loop and the Cassandra JVM share the two cores.")
    lines.append("Warm lookups never reach the GeoDB, so both engines serve them alike; the LocalDB cache"
                 " (`cluster_geodb_cache`, entries live a few seconds) is what keeps the repeated logins of"
                 " the same users off Cassandra, and a cold lookup over a LAN adds one round trip per query.")
    return "\n".join(lines)


async def run(args: argparse.Namespace, work: Path) -> list[Result]:
    results: list[Result] = []
    for name in args.engines:
        if name == "sqlite":
            engine = open_engine("sqlite", path=str(work / "geodb.sqlite"))
        else:
            await asyncio.to_thread(reset_keyspace, "127.0.0.1", KEYSPACE, local_dc="dc1")
            engine = open_engine("cassandra", hosts="127.0.0.1", keyspace=KEYSPACE, local_dc="dc1",
                                 replication={"dc1": 1})
        results += await bench_engine(name, engine, args, work)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="sqlite,cassandra", help="comma-separated: sqlite, cassandra")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--backends", type=int, default=3)
    parser.add_argument("--cold-lookups", type=int, default=3_000)
    parser.add_argument("--warm-lookups", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warm-sample", type=int, default=0,
                        help="users in the LocalDB cache for the warm lookups (0: every user)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
    args = parser.parse_args()
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not args.engines or set(args.engines) - {"sqlite", "cassandra"}:
        parser.error("--engines takes sqlite and/or cassandra")
    if min(args.users, args.groups, args.backends, args.cold_lookups, args.warm_lookups, args.concurrency) < 1:
        parser.error("counts must be positive")
    work = Path(tempfile.mkdtemp(prefix="palomar-geodb-bench-"))
    cassandra = LocalCassandra(work / "cassandra")
    load_before = load_average()
    try:
        if "cassandra" in args.engines:
            log("Cassandra: " + ("started node 1" if cassandra.start() else "using the node already running"))
        results = asyncio.run(run(args, work))
    except (CassandraError, GeoDBError, RuntimeError) as exc:
        print(f"geodb_bench: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        try:
            cassandra.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    write_section(args.out, HEADING, report(results, args, (load_before, load_average())))
    log(f"wrote the '{HEADING}' section of {args.out}")


if __name__ == "__main__":
    main()
