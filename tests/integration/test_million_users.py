"""A backend whose LocalDB remembers a million users keeps serving while its periodic tasks run
(issue: a million users). `write_stats` used to read every `cluster_users` row on the event loop
every 30 s (3.8-4.0 s at 1M rows), freezing every login and relayed session of the backend.

In-process proxy and backend (tests/inprocess_cluster.py) over real loopback sockets, a real
SQLite GeoDB and LocalDB, and a real Dovecot CE behind the backend. The stats writer runs with a
short interval and the LocalDB pruner drains a backlog of half a million expired rows at the same
time, while real IMAP clients log in. A ticker task records how late the event loop woke it.

The assertion is liveness, not speed: the longest stall must stay under STALL_BOUND, a quarter of
the old freeze, so that a shared, loaded test machine does not make it flaky, while a scan of the
table (seconds) or an unbounded prune (a DELETE of 500,000 rows) still fails it.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

from test_store_failures import imap_login

from inprocess_cluster import USERS, InProcessCluster, start_cluster
from palomar.backend.localdb_upkeep import prune_loop
from palomar.backend.service import stats_loop
from palomar.cluster.retention import USER_ROW_RETENTION
from palomar.devcluster.dovecot import DovecotInstance

ROWS = 1_000_000
EXPIRED = ROWS // 2
"""Rows older than the retention: the pruner's backlog while the test runs."""
STATS_INTERVAL = 0.5
STATS_PERIODS = 2
STALL_BOUND = 1.0
"""Seconds. The old stats pass froze the loop for about 4 s at 1M rows."""
TICK = 0.01


def bulk_insert_users(path: str, rows: int, expired: int, now: int) -> None:
    """Fill `cluster_users` fast, through the LocalDB's own schema (its counting triggers fire)."""
    old = now - USER_ROW_RETENTION - 60
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute("BEGIN")
        raw.executemany(
            "INSERT INTO cluster_users (group_name, username, redirect_host, redirect_group, last_update) "
            "VALUES (?, ?, NULL, NULL, ?)",
            ((f"default-{i % 1000}", f"bulk{i}@example.test", old if i < expired else now) for i in range(rows)))
        raw.execute("COMMIT")


async def ticker(lateness: list[float]) -> None:
    """Sleep TICK over and over and record how much later than asked the loop woke this task."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + TICK
        await asyncio.sleep(TICK)
        lateness.append(loop.time() - due)


async def test_logins_are_served_without_stalls_while_stats_and_pruning_run(
        tmp_path: Path, dovecot_backends: dict[str, DovecotInstance]) -> None:
    dovecot = dovecot_backends["backend1"]
    cluster = await start_cluster(tmp_path / "inprocess", backend_host=dovecot.params.listen, dovecot=dovecot)
    try:
        await serve_while_periodic_tasks_run(cluster)
    finally:
        await cluster.stop()


async def serve_while_periodic_tasks_run(cluster: InProcessCluster) -> None:
    backend = cluster.backend
    now = int(backend.clock())
    bulk_insert_users(backend.localdb.path, ROWS, EXPIRED, now)
    assert backend.localdb.users_served() == ROWS

    lateness: list[float] = []
    tasks = [asyncio.create_task(ticker(lateness)),
             asyncio.create_task(stats_loop(backend, STATS_INTERVAL)),
             asyncio.create_task(prune_loop(backend, interval=STATS_INTERVAL, pause=0.05))]
    results = []
    try:
        async with asyncio.timeout(120):
            # the first write happens at once; two more periods must pass with logins going on
            while backend.stats_written < 1 + STATS_PERIODS:
                for user in USERS:
                    results.append(await asyncio.to_thread(imap_login, cluster.listeners["imap"], user))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert results and set(results) == {"OK"}
    assert lateness, "the ticker never ran"
    assert max(lateness) < STALL_BOUND, f"the event loop stalled for {max(lateness):.2f}s"
    # the count written is the counter the triggers keep, and it matches the table
    row = await backend.geodb.backend_get(backend.site_id, backend.backend_id)
    assert row is not None and row.user_count_approx is not None
    with contextlib.closing(sqlite3.connect(backend.localdb.path)) as raw:
        (actual,) = raw.execute("SELECT COUNT(*) FROM cluster_users WHERE redirect_host IS NULL").fetchone()
    assert backend.localdb.users_served() == actual
    assert ROWS - EXPIRED + len(USERS) <= actual <= ROWS + len(USERS)
    assert row.user_count_approx >= ROWS - EXPIRED
