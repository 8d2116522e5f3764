"""The controller's failback, balance and evacuate features on a real 4-backend cluster.

Rolling restart: each backend in turn crashes (its Dovecot killed), the proxies take it offline and
fail its users' groups over, it comes back and the health feature sets it online. With `failback`
(and `balance`) on, the groups return without an administrator: every backend ends with at least
its load-factor share minus `controller_failback_tolerance` groups (docs/design/controller.md).
Then a backend is killed for good and `evacuate` moves every group it still holds elsewhere.
Placement counts a group that is moving at its destination (a move finishes on the group's next
access, docs/design/moves.md).
"""

from __future__ import annotations

import asyncio
import imaplib
import json
import ssl
from pathlib import Path

import pytest

from palomar.cluster.model import Group
from palomar.devcluster.cluster import SITE, BackendNode, LocalCluster
from palomar.devcluster.net import wait_until
from palomar.geodb.repository import GeoDB

GROUPS = 40
TOLERANCE = 1


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    count = (f"cluster_default_group_count = {GROUPS}",)
    c = LocalCluster(harness_root / "rebalance-cluster", backends_count=4, users_count=40, controller=True,
                     stats_interval="1 secs",
                     proxy_settings={"*": ("cluster_proxy_probe_interval = 1 secs", *count)},
                     backend_settings=(*count, "cluster_backend_stats_interval = 2 secs"),
                     controller_settings=("controller_health_quiet_time = 3 secs",
                                          "controller_failback_groups_per_hour = 3600",
                                          "controller_failback_min_residence = 0",
                                          f"controller_failback_tolerance = {TOLERANCE}",
                                          "controller_evacuate_after = 10 secs",
                                          "controller_evacuate_groups_per_hour = 3600"))
    c.start()
    _spread_groups(c)
    yield c
    c.stop()


def _spread_groups(cluster: LocalCluster, only: tuple[str, str] | None = None) -> None:
    """default-1..default-40, ten per backend, as a long-running cluster would have them (or only
    the group `only[0]` on backend `only[1]`)."""

    async def main() -> None:
        engine = cluster.geodb_engine()
        await engine.open()
        db = GeoDB(engine)
        try:
            site = await db.site_get_by_name(SITE)
            assert site is not None
            backends = await db.backend_list(site.id)
            if only is not None:
                owner = next(b for b in backends if b.host == only[1])
                await db.group_create_if_absent(Group(site.id, only[0], backend_id=owner.id))
                return
            for n in range(1, GROUPS + 1):
                owner = backends[(n - 1) % len(backends)]
                await db.group_create_if_absent(Group(site.id, f"default-{n}", backend_id=owner.id))
        finally:
            await engine.close()

    asyncio.run(main())


def placement(cluster: LocalCluster) -> dict[str, int]:
    counts = {node.host: 0 for node in cluster.backends}
    for g in json.loads(cluster.cluster("--json", "group", "list").stdout):
        where = g["alt_backend"] if g["moving"] else g["backend"]
        if where is not None:
            counts[where] = counts.get(where, 0) + 1
    return counts


def status(cluster: LocalCluster, node: BackendNode) -> str:
    return json.loads(cluster.cluster("--json", "backend", "status", node.host).stdout)["status"]


def login_everyone(cluster: LocalCluster) -> list[str]:
    """Log every user in once through HAProxy; the failed logins (user: server's answer)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    failed = []
    for i in range(1, cluster.users_count + 1):
        imap = imaplib.IMAP4_SSL(cluster.lb_host, cluster.lb_imaps, ssl_context=context, timeout=30)
        try:
            imap.login(f"user{i}@example.test", f"password{i}")
        except imaplib.IMAP4.error as exc:
            failed.append(f"user{i}: {exc}")
            imap.shutdown()
            continue
        try:
            imap.logout()
        except (imaplib.IMAP4.abort, OSError):
            # a move the controller requested reached this user right after its login and closed
            # the session (docs/design/moves.md): the client logs in again, at the new backend
            imap.shutdown()
    return failed


def crash_until_offline(cluster: LocalCluster, node: BackendNode, *, keep_service: bool = True) -> None:
    cluster.kill_dovecot(node)
    if not keep_service:
        cluster.kill_backend_service(node)
    wait_until(lambda: login_everyone(cluster) is not None and status(cluster, node) == "offline", 90,
               f"{node.host} marked offline")


def within_bound(counts: dict[str, int]) -> bool:
    share = GROUPS / len(counts)  # equal load factors
    return all(c >= share - TOLERANCE for c in counts.values())


def test_rolling_restart_returns_groups_to_their_shares(cluster: LocalCluster) -> None:
    for feature in ("failback", "balance"):
        cluster.cluster("feature", "set", SITE, feature, "on")
    assert placement(cluster) == {node.host: 10 for node in cluster.backends}
    lowest_after_outage = []
    for node in cluster.backends:
        crash_until_offline(cluster, node)
        lowest_after_outage.append(placement(cluster)[node.host])
        node.dovecot.start()
        wait_until(lambda n=node: status(cluster, n) == "online", 90, f"{node.host} back online")
    # the outages really displaced groups (a restart with palomar's rules alone leaves them displaced) ...
    assert min(lowest_after_outage) < GROUPS / 4 - TOLERANCE, lowest_after_outage
    # ... and failback brings every backend back within the bound, without an administrator
    wait_until(lambda: within_bound(placement(cluster)), 180, "groups back within the load-factor shares")
    log = (cluster.root / "controller" / "palomar.log").read_text()
    assert "event=controller_group_move feature=failback" in log
    assert login_everyone(cluster) == []


def test_evacuate_dryrun_logs_then_on_moves_a_dead_backends_groups_away(cluster: LocalCluster) -> None:
    cluster.cluster("feature", "set", SITE, "evacuate", "dryrun")
    node = cluster.backends[-1]
    _spread_groups(cluster, ("nobody-logs-in", node.host))  # a group no login fails over
    crash_until_offline(cluster, node, keep_service=False)
    log_path = cluster.root / "controller" / "palomar.log"
    wait_until(lambda: "event=controller_dryrun feature=evacuate" in log_path.read_text(), 60,
               "the evacuate decision logged")
    dryrun = [line for line in log_path.read_text().splitlines() if "event=controller_dryrun feature=evacuate" in line]
    assert f"from={node.host}" in dryrun[0] and "offline for" in dryrun[0]
    still = {g["name"] for g in json.loads(cluster.cluster("--json", "group", "list").stdout)
             if g["backend"] == node.host and not g["moving"]}
    assert "nobody-logs-in" in still  # dryrun requested nothing: the stranded groups are where they were
    cluster.cluster("feature", "set", SITE, "evacuate", "on")
    wait_until(lambda: placement(cluster)[node.host] == 0, 120, f"every group off {node.host}")
    log = log_path.read_text()
    assert f"event=controller_group_move feature=evacuate site={SITE}" in log
    assert login_everyone(cluster) == []
    counts = placement(cluster)
    assert sum(counts.values()) == GROUPS + 1 and counts[node.host] == 0
