"""The whole cluster with its GeoDB on a real Cassandra: routing, a group move, failover.

The same processes as the SQLite integration tests (HAProxy, two `palomar proxy`, two `palomar
backend`, two Dovecot CE, and the `palomar cluster` CLI), but every role's config says
`cluster_geodb_driver = cassandra`. Most scenarios are the SQLite modules' own test functions,
imported here so that they run a second time against this module's `cluster` fixture; their
GeoDB helpers open `cluster.geodb_engine()`, which is Cassandra here.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_failover as failover
import test_imap_path as imap_path
import test_moves as moves

from palomar.devcluster.cassandra import reset_keyspace
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.net import wait_until
from palomar.geodb.repository import GeoDB

PINNED = "pinned@example.test:{PLAIN}pinnedpw::::::host=127.0.0.3"
"""passdb sends this user to 127.0.0.3; the referral test puts its group on 127.0.0.2."""
MOVE_MEMBERS = [moves.user(i) for i in range(21, 27)]
"""Users of the moved group: not among those the routing tests place (user1 .. user20)."""


@pytest.fixture(scope="module")
def cluster(cassandra: Any, harness_root: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(harness_root / "cassandra-cluster", geodb="cassandra", users_count=26,
                     allow_cleartext=True, password_scheme="PLAIN", auth_failure_delay="100 ms",
                     stats_interval="1 secs", extra_passwd_lines=(PINNED,),
                     proxy_settings={"*": ("cluster_proxy_probe_interval = 1 secs",)})
    try:
        c.start()
        yield c
    finally:
        c.stop()


def test_every_role_is_configured_for_cassandra(cluster: LocalCluster) -> None:
    for path in [*(p.config for p in cluster.proxies), *(b.config for b in cluster.backends)]:
        text = path.read_text()
        assert "cluster_geodb_driver = cassandra" in text and "cluster_geodb_path" not in text
        assert f"cassandra_keyspace = {cluster.keyspace}" in text
    assert not cluster.geodb_path.exists(), "something opened an SQLite GeoDB"

    async def sites(db: GeoDB) -> list[str]:
        return [s.name for s in await db.site_list()]

    assert moves.geo(cluster, sites) == ["DC1"]


# --- routing (tests/integration/test_imap_path.py) ------------------------------------------------

test_every_backend_is_probed_at_startup = failover.test_every_backend_is_probed_at_startup
test_same_user_from_both_proxies_lands_on_one_backend = imap_path.test_same_user_from_both_proxies_lands_on_one_backend
test_users_spread_over_both_backends_by_group = imap_path.test_users_spread_over_both_backends_by_group
test_user_sent_to_the_wrong_backend_is_referred_to_the_right_one = (
    imap_path.test_user_sent_to_the_wrong_backend_is_referred_to_the_right_one)
test_sessions_flow_into_proxy_dest_stats = imap_path.test_sessions_flow_into_proxy_dest_stats
test_backends_report_backend_stats_and_user_counts = imap_path.test_backends_report_backend_stats_and_user_counts


# --- the CLI --------------------------------------------------------------------------------------


def test_cluster_cli_verbs_on_cassandra(cluster: LocalCluster) -> None:
    """Verbs beyond the ones the scenarios use: LWT inserts (tag, feature), scans, lists."""
    backends = json.loads(cluster.cluster("--json", "backend", "list").stdout)
    assert sorted(b["host"] for b in backends) == sorted(b.host for b in cluster.backends)
    assert [s["name"] for s in json.loads(cluster.cluster("--json", "site", "list").stdout)] == ["DC1"]
    cluster.cluster("tag", "create", "eu")
    assert "already exists" in cluster.cluster("tag", "create", "eu", check=False).stderr
    assert [t["name"] for t in json.loads(cluster.cluster("--json", "tag", "list").stdout)] == ["eu"]
    cluster.cluster("feature", "set", "DC1", "health", "off")
    features = json.loads(cluster.cluster("--json", "feature", "list").stdout)
    assert any(f["feature"] == "health" and f["state"] == "off" for f in features), features
    users = {u["username"] for u in json.loads(cluster.cluster("--json", "user", "list").stdout)}
    assert {"user1@example.test", "pinned@example.test"} <= users


def test_cluster_cli_with_cassandra_unreachable_is_one_line(cluster: LocalCluster, tmp_path: Path) -> None:
    config = tmp_path / "palomar.conf"
    text = cluster.admin_config.read_text()
    config.write_text(re.sub(r"(?m)^cassandra_hosts = .*$", "cassandra_hosts = 127.0.0.1:1", text))
    run = subprocess.run([sys.executable, "-m", "palomar", "cluster", "-c", str(config), "site", "list"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert "cannot connect" in run.stderr and "127.0.0.1:1" in run.stderr


# --- a group move (tests/integration/test_moves.py's helpers) -------------------------------------


async def test_group_move_kicks_idle_sessions_to_the_destination(cluster: LocalCluster) -> None:
    src, dst = cluster.backends[0].host, cluster.backends[1].host
    await asyncio.to_thread(moves.make_group, cluster, "mv", src, dst, MOVE_MEMBERS)
    proxies = cluster.proxies
    sessions = [await moves.ImapSession.open(proxies[i % 2].host, proxies[i % 2].imap, name)
                for i, name in enumerate(MOVE_MEMBERS)]
    assert all(sessions), "a member could not log in before the move"
    assert await asyncio.to_thread(moves.who, cluster, src) >= set(MOVE_MEMBERS)

    await asyncio.to_thread(cluster.cluster, "group", "move", "DC1", "mv", dst)
    accessed = await asyncio.to_thread(cluster.cluster, "group", "access", "mv")  # a move starts on access
    assert accessed.stdout.strip() in ("mv: started", "mv: running", "mv: not moving")
    async with asyncio.timeout(60):  # the source closes every session of the moved group
        await asyncio.gather(*(s.closed() for s in sessions if s is not None))
    await asyncio.to_thread(wait_until, lambda: moves.group_status(cluster, "mv")["backend"] == dst, 60,
                            "the group move to finish")
    for i, name in enumerate(MOVE_MEMBERS):  # both proxies now send them to the destination
        assert await moves.login_once(proxies[(i + 1) % 2].host, proxies[(i + 1) % 2].imap, name)

    status = await asyncio.to_thread(moves.group_status, cluster, "mv")
    assert status["moving"] is None and status["alt_backend"] == src
    assert (await asyncio.to_thread(moves.backend_status, cluster, src))["last_moved_to"] == dst
    src_log = moves.log_text(moves.node(cluster, src).log_path)
    finished = re.search(r"event=cluster_user_group_move_finished group=mv .*moved_users=(\d+) "
                         r"failed_users=(\d+)", src_log)
    assert finished and int(finished[1]) >= len(MOVE_MEMBERS) and finished[2] == "0"
    dst_log = moves.log_text(moves.node(cluster, dst).log_path)
    assert all(re.search(rf"user={re.escape(n)} proto=imap .* login ok", dst_log) for n in MOVE_MEMBERS)


# --- failover (tests/integration/test_failover.py) ------------------------------------------------

test_dovecot_killed_groups_fail_over_and_probes_see_it_return = (
    failover.test_dovecot_killed_groups_fail_over_and_probes_see_it_return)
test_backend_service_killed_groups_fail_over = failover.test_backend_service_killed_groups_fail_over


@pytest.fixture
def race_geodb(cassandra: Any) -> tuple[str, dict]:
    """Both racing routers on one Cassandra keyspace: the group's failover is an LWT there."""
    reset_keyspace("127.0.0.1", "failover_race", local_dc="dc1")
    return "cassandra", {"hosts": "127.0.0.1", "keyspace": "failover_race", "local_dc": "dc1",
                         "replication": {"dc1": 1}}


test_two_proxies_failing_over_one_group_converge = failover.test_two_proxies_failing_over_one_group_converge
