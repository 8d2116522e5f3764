"""`palomar cluster geodb status`: answers within the bound whether the GeoDB is up or not."""

from __future__ import annotations

import sqlite3

from cluster_harness import Cluster


def test_status_of_a_working_geodb(cluster: Cluster) -> None:
    cluster.ok("site", "add", "east")
    record = cluster.json("geodb", "status")
    assert record["state"] == "available" and record["engine"] == "sqlite"
    assert record["target"] == str(cluster.geodb_path) and record["latency_ms"] >= 0
    assert record["stale_max_secs"] == 3600


def test_status_of_a_locked_geodb_is_unavailable_within_the_timeout(cluster: Cluster) -> None:
    cluster.ok("site", "add", "east")
    cluster.config.write_text(cluster.config.read_text() + "cluster_geodb_timeout = 1 secs\n")
    locker = sqlite3.connect(cluster.geodb_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the file
    try:
        result = cluster.run("geodb", "status", json_output=True)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert '"state": "unavailable"' in result.stdout and "no answer within 1s" in result.stdout
