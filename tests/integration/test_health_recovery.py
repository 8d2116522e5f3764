"""A backend comes back: the proxies' probes see it, the controller's health feature sets it online
(with `on`), only logs (with `dryrun`), does nothing (with `off`), and never overrides an admin."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palomar.devcluster.cluster import SITE, BackendNode, LocalCluster
from palomar.devcluster.net import wait_until


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "health-cluster", controller=True, stats_interval="1 secs",
                     proxy_settings={"*": ("cluster_proxy_probe_interval = 1 secs",)})
    c.start()
    yield c
    c.stop()


def status(cluster: LocalCluster, node: BackendNode) -> dict:
    return json.loads(cluster.cluster("--json", "backend", "status", node.host).stdout)


def take_down_and_revive(cluster: LocalCluster, node: BackendNode) -> None:
    """Kill the backend's Dovecot, let a proxy notice (a login attempt), wait for offline, revive Dovecot."""
    import imaplib
    import ssl

    for group in json.loads(cluster.cluster("--json", "group", "list").stdout):  # earlier failovers moved them
        if group["backend"] != node.host:
            cluster.cluster("group", "move", "--direct", SITE, group["name"], node.host)
    cluster.kill_dovecot(node)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    def offline() -> bool:
        for i in range(1, 21):  # some of these users live on `node`: their logins expose the failure
            imap = imaplib.IMAP4_SSL(cluster.lb_host, cluster.lb_imaps, ssl_context=context, timeout=30)
            try:
                imap.login(f"user{i}@example.test", f"password{i}")
                imap.logout()
            except imaplib.IMAP4.error:
                imap.shutdown()
        return status(cluster, node)["status"] == "offline"

    wait_until(offline, 60, f"{node.host} marked offline")
    assert status(cluster, node)["status_reason"].startswith("proxy ")
    node.dovecot.start()


def test_health_on_sets_a_recovered_backend_online(cluster: LocalCluster) -> None:
    node = cluster.backends[0]
    cluster.cluster("feature", "set", SITE, "health", "on")
    take_down_and_revive(cluster, node)
    wait_until(lambda: status(cluster, node)["status"] == "online", 90, "the controller setting it online")
    assert status(cluster, node)["status_reason"].startswith("controller:")


@pytest.mark.parametrize("state", ["dryrun", "off"])
def test_dryrun_only_logs_and_off_does_nothing(cluster: LocalCluster, state: str) -> None:
    node = cluster.backends[1]
    cluster.cluster("feature", "set", SITE, "health", state)
    take_down_and_revive(cluster, node)
    log = cluster.root / "controller" / "palomar.log"
    if state == "dryrun":
        wait_until(lambda: "dryrun" in log.read_text() and node.host in log.read_text(), 60,
                   "the dryrun decision in the controller log")
    else:
        # probes succeed again, yet nothing changes: the controller evaluates steady successes and stays put
        wait_until(lambda: _probe_successes(cluster, node) >= 3, 60, "steady probe successes")
        _wait_for_ticks(cluster, 2)
    assert status(cluster, node)["status"] == "offline"
    cluster.cluster("backend", "update", "--status", "online", node.host)


def test_admin_offline_stays_offline(cluster: LocalCluster) -> None:
    node = cluster.backends[0]
    cluster.cluster("feature", "set", SITE, "health", "on")
    cluster.cluster("backend", "update", "--status", "offline", node.host)
    assert status(cluster, node)["status_reason"] == "admin"
    wait_until(lambda: _probe_successes(cluster, node) >= 3, 60, "steady probe successes")
    _wait_for_ticks(cluster, 2)
    assert status(cluster, node)["status"] == "offline"
    cluster.cluster("backend", "update", "--status", "online", node.host)


def _ticks(cluster: LocalCluster) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://{cluster.lb_host}:{cluster.controller_metrics}/metrics",
                                  timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("palomar_controller_ticks_total"))


def _wait_for_ticks(cluster: LocalCluster, count: int) -> None:
    """Let the controller evaluate `count` more times (it would have acted by then)."""
    start = _ticks(cluster)
    wait_until(lambda: _ticks(cluster) >= start + count, 30, f"{count} controller ticks")


def _probe_successes(cluster: LocalCluster, node: BackendNode) -> float:
    import asyncio

    from palomar.geodb import open_engine
    from palomar.geodb.repository import GeoDB

    async def main() -> float:
        engine = open_engine("sqlite", path=str(cluster.geodb_path))
        await engine.open()
        try:
            db = GeoDB(engine)
            site = await db.site_get_by_name(SITE)
            rows = await db.proxy_dest_stats_list(site.id, node.host)
            values = [r.value for r in rows if r.key == "probe_consecutive_success"]
            return min(values) if values else 0.0
        finally:
            await engine.close()

    return asyncio.run(main())
