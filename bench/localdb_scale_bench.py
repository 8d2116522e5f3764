"""A backend's LocalDB at a million users (the "million users" issue): what each periodic task
costs on the event loop.

A LocalDB file with `--users` `cluster_users` rows (half of them older than the retention, as
after a day of logins by other users), then, each measured on its own:

* the stats count: the old scan (`len({r.username for r in user_list()})`) against the counter row
  the triggers keep (`users_served()`);
* a login's LocalDB write (`user_put`, an upsert that also updates the counter and the index);
* one pruning pass (`prune_once`: `PRUNE_BATCH` users and up to `PRUNE_BATCH` of the expired
  cache rows it also finds) and how long the whole expired half takes to drain at `PRUNE_PAUSE`
  between passes (the pass time only is measured; the pauses are added).

Results replace the `## LocalDB at a million users` section of docs/benchmarks.md.

    .venv/bin/python bench/localdb_scale_bench.py                  # 1,000,000 users, about a minute
    .venv/bin/python bench/localdb_scale_bench.py --users 100000 --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from palomar.backend.localdb_upkeep import PRUNE_BATCH, PRUNE_PAUSE, prune_once
from palomar.cluster.retention import USER_ROW_RETENTION
from palomar.localdb import LocalDB
from palomar.localdb.store import CACHE_PURGE_BATCH
from report import load_average, log, machine_rows, median, percentile, table, write_section

HEADING = "LocalDB at a million users"
NOW = 2_000_000_000


def fill(path: str, users: int) -> float:
    """`users` rows, the first half expired; returns the seconds the insert took."""
    old = NOW - USER_ROW_RETENTION - 60
    started = time.perf_counter()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute("BEGIN")
        raw.executemany(
            "INSERT INTO cluster_users (group_name, username, redirect_host, redirect_group, last_update) "
            "VALUES (?, ?, NULL, NULL, ?)",
            ((f"default-{i % 1000}", f"user{i}@example.test", old if i < users // 2 else NOW)
             for i in range(users)))
        raw.executemany(
            "INSERT INTO cluster_geodb_cache (cache_key, value, expire_timestamp) VALUES (?, 'v', ?)",
            ((f"backend-user/user{i}", NOW - 10) for i in range(CACHE_PURGE_BATCH * 10)))
        raw.execute("COMMIT")
    return time.perf_counter() - started


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def ms(seconds: float) -> str:
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def run(users: int, work: Path) -> dict[str, object]:
    path = str(work / "localdb.sqlite")
    db = LocalDB(path)
    log(f"inserting {users:,} rows")
    insert = fill(path, users)
    log("old stats scan")
    scan = timed(lambda: len({r.username for r in db.user_list(None)}), 3)
    counter = timed(db.users_served, 1000)
    put = timed(lambda: db.user_put("default-1", f"new{time.perf_counter_ns()}@example.test", now=NOW), 2000)
    state = SimpleNamespace(localdb=db, by_user={}, moves=None)
    log("draining the expired half")
    passes = []
    while True:
        started = time.perf_counter()
        result = prune_once(state, NOW)
        passes.append(time.perf_counter() - started)
        if not result.full:
            break
    served = db.users_served()
    db.close()
    return {"insert": insert, "scan": scan, "counter": counter, "put": put, "passes": passes, "served": served}


def report(users: int, r: dict, loads: tuple[str, str]) -> str:
    passes = r["passes"]
    rows = [
        ("stats count, old: scan of `cluster_users` (3 runs)", ms(median(r["scan"])), ms(max(r["scan"]))),
        ("stats count, new: `users_served()` counter row (1,000 runs)", ms(median(r["counter"])),
         ms(max(r["counter"]))),
        ("a login's `user_put` (upsert, counter, index; 2,000 runs)", ms(median(r["put"])),
         ms(percentile(r["put"], 99))),
        (f"one pruning pass: {PRUNE_BATCH} users (+ {PRUNE_BATCH} cache rows in the first ones; "
         f"{len(passes)} passes)",
         ms(median(passes)), ms(max(passes))),
    ]
    drain = sum(passes) + PRUNE_PAUSE * (len(passes) - 1)
    machine = table(["", ""], [*machine_rows(), ("load average before / after", f"{loads[0]} / {loads[1]}")])
    return f"""Written by `bench/localdb_scale_bench.py --users {users}`. One backend LocalDB (SQLite in a
temporary directory on /dev/shm, tmpfs, where a LocalDB lives) with {users:,} `cluster_users`
rows, half of them past the retention ({USER_ROW_RETENTION} s), and {CACHE_PURGE_BATCH * 10:,}
expired cache rows. Each figure is time on the event loop for one call
(median, and the max or p99 as named). Bulk insert of the rows (one transaction, counter triggers
firing): {r['insert']:.1f} s.

{table(["what", "median", "max / p99"], rows)}

Draining the expired half ({users // 2:,} rows) took {len(passes)} passes: {ms(sum(passes))} of
loop time in total, spread over {drain:.0f} s at `PRUNE_PAUSE` = {PRUNE_PAUSE} s between passes;
`users_served()` afterwards: {r['served']:,}. See docs/design/periodic-tasks.md.

{machine}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
    args = parser.parse_args()
    load_before = load_average()
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None  # where a LocalDB lives (tmpfs)
    with tempfile.TemporaryDirectory(prefix="palomar-localdb-bench-", dir=shm) as work:
        results = run(args.users, Path(work))
    write_section(args.out, HEADING, report(args.users, results, (load_before, load_average())))
    log(f"wrote the '{HEADING}' section of {args.out}")


if __name__ == "__main__":
    main()
