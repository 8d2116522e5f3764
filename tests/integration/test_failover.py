"""Backend failure on the proxies' side: offline marking, failover of groups, probes.

Real processes: HAProxy, two `palomar proxy`, two `palomar backend`, two Dovecot CE. A backend
is killed with SIGKILL (its Dovecot, or its palomar service) while a client logs in again and
again; the logins must come back on the alternate backend and never look like a wrong password.
"""

from __future__ import annotations

import asyncio
import imaplib
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest
from harness.clients import tls_context

from palomar.cluster.model import Backend, Group, Site
from palomar.devcluster.cluster import SITE, BackendNode, LocalCluster
from palomar.devcluster.net import wait_until
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB
from palomar.proxy.router import Router

MAX_LOGINS = 60
"""Bound of the login loop while a backend is down (each login takes milliseconds)."""


def try_login(host: str, port: int, user: str, password: str) -> str:
    """`OK`, or the server's refusal text."""
    imap = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(), timeout=30)
    try:
        imap.login(user, password)
    except imaplib.IMAP4.error as exc:
        imap.shutdown()
        return str(exc)
    imap.logout()
    return "OK"


def geodb(cluster: LocalCluster, action: Callable):
    async def main():
        engine = cluster.geodb_engine()
        await engine.open()
        try:
            db = GeoDB(engine)
            site = await db.site_get_by_name(SITE)
            return await action(db, site)
        finally:
            await engine.close()

    return asyncio.run(main())


def backends(cluster: LocalCluster) -> dict[str, Backend]:
    async def action(db, site):
        return {b.host: b for b in await db.backend_list(site.id)}
    return geodb(cluster, action)


def placement(cluster: LocalCluster) -> dict[str, str]:
    """user name -> host of the backend its group is on."""
    async def action(db, site):
        hosts = {b.id: b.host for b in await db.backend_list(site.id)}
        groups = {g.name: hosts.get(g.backend_id) for g in await db.group_list(site.id)}
        return {u.username: groups.get(u.group_name) for u in await db.user_list_all()}
    return geodb(cluster, action)


def stat_rows(cluster: LocalCluster, host: str) -> list:
    async def action(db, site):
        return await db.proxy_dest_stats_list(site.id, host)
    return geodb(cluster, action)


def dest_stats(cluster: LocalCluster, host: str) -> dict[str, list[float]]:
    """proxy_dest_stats values towards `host`, by key (one value per proxy host)."""
    found: dict[str, list[float]] = {}
    for row in stat_rows(cluster, host):
        found.setdefault(row.key, []).append(row.value)
    return found


def login_everyone(cluster: LocalCluster) -> None:
    for user in cluster.users:
        assert try_login(cluster.lb_host, cluster.lb_imaps, user.name, user.password) == "OK"


def failover_while_logging_in(cluster: LocalCluster, victim: BackendNode, kill: Callable[[], None]) -> list[str]:
    """Kill `victim`, then log its users in until each of them got in once after the first success."""
    before = placement(cluster)
    users = [u for u in cluster.users if before[u.name] == victim.host]
    assert users, "the victim backend serves nobody"
    kill()
    results: list[str] = []
    succeeded_after_first: set[str] = set()
    for attempt in range(MAX_LOGINS):
        user = users[attempt % len(users)]
        results.append(try_login(cluster.lb_host, cluster.lb_imaps, user.name, user.password))
        if "OK" in results:
            if results[-1] == "OK":
                succeeded_after_first.add(user.name)
            if len(succeeded_after_first) == len(users):
                break
    return results


def assert_failed_over(cluster: LocalCluster, victim: BackendNode, results: list[str]) -> None:
    assert "OK" in results, f"no login succeeded after the kill: {results[:5]}"
    first = results.index("OK")
    assert all("UNAVAILABLE" in r for r in results[:first]), results[:first]
    assert all(r == "OK" for r in results[first:]), results[first:]
    assert not any("AUTHENTICATIONFAILED" in r for r in results)
    other = next(b for b in cluster.backends if b is not victim)
    rows = backends(cluster)
    assert rows[victim.host].status == "offline"
    assert (rows[victim.host].status_reason or "").startswith("proxy ")
    assert set(placement(cluster).values()) == {other.host}
    assert rows[victim.host].last_moved_to == other.host
    assert rows[other.host].last_moved_from == victim.host
    logs = "".join(p.log_path.read_text() for p in cluster.proxies)
    assert f"event=cluster_backend_check_finished backend_id={rows[victim.host].id} " \
           f"backend_host={victim.host} status=offline" in logs
    assert f"backend {victim.host} is offline, routing again" in logs, "the failing login was not re-routed"


@pytest.fixture(scope="module")
def cluster(harness_root: Path):
    c = LocalCluster(harness_root / "failover-cluster", auth_failure_delay="100 ms", stats_interval="1 secs",
                     users_count=12, proxy_settings={"*": ("cluster_proxy_probe_interval = 1 secs",)})
    c.start()
    yield c
    c.stop()


def test_every_backend_is_probed_at_startup(cluster: LocalCluster) -> None:
    for node in cluster.backends:
        wait_until(lambda node=node: dest_stats(cluster, node.host).get("probe_success", [0])[0] >= 1, 20,
                   f"a start-up probe of {node.host} in proxy_dest_stats")
        stats = dest_stats(cluster, node.host)
        assert stats["probe_last_success"][0] > time.time() - 120
        assert stats["probe_consecutive_success"][0] >= 1
        assert "probe_failure" not in stats
        types = {row.key: row.type for row in stat_rows(cluster, node.host)}
        assert types["probe_success"] == "counter"
        assert types["probe_last_success"] == types["probe_consecutive_success"] == "gauge"
        node.dovecot.wait_for_log(rf"Login: user=<probe-{node.host}>")
    for proxy in cluster.proxies:
        text = urllib.request.urlopen(f"http://{proxy.host}:{proxy.metrics}/metrics", timeout=10).read().decode()
        assert any(line.startswith("palomar_proxy_backend_probes_total{") and 'result="ok"' in line
                   for line in text.splitlines())


def test_dovecot_killed_groups_fail_over_and_probes_see_it_return(cluster: LocalCluster) -> None:
    login_everyone(cluster)
    assert set(placement(cluster).values()) == {b.host for b in cluster.backends}
    victim = cluster.backends[0]
    results = failover_while_logging_in(cluster, victim, lambda: cluster.kill_dovecot(victim))
    assert_failed_over(cluster, victim, results)
    reason = backends(cluster)[victim.host].status_reason

    wait_until(lambda: dest_stats(cluster, victim.host).get("probe_failure", [0])[0] >= 1, 20,
               "a failed probe of the dead backend")
    victim.dovecot.start()
    wait_until(lambda: max(dest_stats(cluster, victim.host).get("probe_consecutive_success", [0])) >= 2, 30,
               "probes succeeding again")
    row = backends(cluster)[victim.host]
    assert row.status == "offline" and row.status_reason == reason, "a probe must never set a backend online"
    cluster.cluster("backend", "update", "--status", "online", victim.host)


def test_backend_service_killed_groups_fail_over(cluster: LocalCluster) -> None:
    login_everyone(cluster)
    victim = cluster.backends[1]  # every group is here since the previous test
    assert set(placement(cluster).values()) == {victim.host}
    results = failover_while_logging_in(cluster, victim, lambda: cluster.kill_backend_service(victim))
    assert_failed_over(cluster, victim, results)
    cluster.restart_backend(victim)
    cluster.cluster("backend", "update", "--status", "online", victim.host)


# --- cluster_proxy_check_backends = no ------------------------------------------------------------


@pytest.fixture(scope="module")
def unchecked(harness_root: Path):
    c = LocalCluster(harness_root / "unchecked-cluster", auth_failure_delay="100 ms", stats_interval="1 secs",
                     users_count=8, proxies_count=1,
                     proxy_settings={"*": ("cluster_proxy_check_backends = no",
                                           "cluster_proxy_offline_failures = 1")})
    c.start()
    yield c
    c.stop()


def test_proxy_with_checks_off_never_marks_a_backend_offline(unchecked: LocalCluster) -> None:
    proxy = unchecked.proxies[0]
    for user in unchecked.users:
        assert try_login(proxy.host, proxy.imaps, user.name, user.password) == "OK"
    where = placement(unchecked)
    victim = next(b for b in unchecked.backends if b.host in where.values())
    users = [u for u in unchecked.users if where[u.name] == victim.host]
    unchecked.kill_backend_service(victim)
    for attempt in range(10):
        user = users[attempt % len(users)]
        result = try_login(proxy.host, proxy.imaps, user.name, user.password)
        assert "UNAVAILABLE" in result and "AUTHENTICATIONFAILED" not in result
    wait_until(lambda: dest_stats(unchecked, victim.host).get("session_failure", [0])[0] >= 10, 15,
               "the failures in proxy_dest_stats")
    row = backends(unchecked)[victim.host]
    assert row.status == "online"
    assert not any(k.startswith("probe_") for k in dest_stats(unchecked, victim.host))
    assert "backend checks off" in proxy.log_path.read_text()
    assert "status=offline" not in proxy.log_path.read_text()


# --- two proxies racing the same failover ---------------------------------------------------------


@pytest.fixture
def race_geodb(tmp_path: Path) -> tuple[str, dict]:
    """The GeoDB engine and options of the racing routers (the Cassandra tests override it)."""
    return "sqlite", {"path": str(tmp_path / "geodb.sqlite")}


async def test_two_proxies_failing_over_one_group_converge(tmp_path: Path, caplog, race_geodb) -> None:
    """Two routers with their own GeoDB connections and caches fail the same group over at once."""
    driver, options = race_geodb
    engines = [open_engine(driver, **options) for _ in range(2)]
    for engine in engines:
        await engine.open()
    dbs = [GeoDB(e) for e in engines]
    site = Site(uuid4(), SITE)
    await dbs[0].site_add(site)
    failed, alt, spare = (Backend(uuid4(), site.id, host, status="online") for host in ("be-a", "be-b", "be-c"))
    for backend in (failed, alt, spare):
        await dbs[0].backend_add(backend)
    await dbs[0].group_create_if_absent(Group(site.id, "default-1", backend_id=failed.id, alt_backend_id=alt.id))
    users = [f"user{i}@example.test" for i in range(20)]
    for user in users:
        await dbs[0].user_put(user, group_name="default-1")
    await dbs[0].backend_set_status(site.id, failed.id, "offline", "proxy test: dead")
    routers = [Router(db, LocalDB(str(tmp_path / f"localdb{i}.sqlite")), site_name=SITE, group_count=100)
               for i, db in enumerate(dbs)]
    caplog.set_level(logging.INFO, logger="palomar.proxy")
    try:
        results = await asyncio.gather(*(router.route(user) for user in users for router in routers))
        group = await dbs[0].group_get(site.id, "default-1")
        stored = {b.host: b for b in await dbs[0].backend_list(site.id)}
    finally:
        for engine in engines:
            await engine.close()
    assert {r.host for r in results} == {"be-b"}
    assert group.backend_id == alt.id and group.alt_backend_id == spare.id and not group.moving
    assert [r.getMessage() for r in caplog.records].count(f"group default-1 failed over to backend {alt.id}") == 1
    assert stored["be-a"].last_moved_to == "be-b" and stored["be-b"].last_moved_from == "be-a"
    assert stored["be-c"].last_moved_from is None and stored["be-c"].last_moved_to is None


async def test_offline_marking_never_overrides_another_status(tmp_path: Path) -> None:
    from palomar.cluster.health_proxy import ThresholdRule
    from palomar.metrics.registry import Registry
    from palomar.proxy.health import BackendHealth

    engine = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"))
    await engine.open()
    db = GeoDB(engine)
    try:
        site = Site(uuid4(), SITE)
        await db.site_add(site)
        rows = {host: Backend(uuid4(), site.id, host, status=status, status_reason=reason)
                for host, status, reason in (("be-a", "online", None), ("be-b", "standby", "admin"),
                                             ("be-c", "offline", "admin"))}
        for backend in rows.values():
            await db.backend_add(backend)
        router = Router(db, LocalDB(str(tmp_path / "localdb.sqlite")), site_name=SITE, group_count=100)
        await router.site_view()  # cached: the marking must drop it
        health = BackendHealth(geodb=db, router=router, site_id=site.id, proxy_host="px1",
                               rule=ThresholdRule(2, 10), registry=Registry())
        assert await health.session_failed("be-a", "proxy_dest_connect_failed") is False  # no probe: waits
        assert (await db.backend_get(site.id, rows["be-a"].id)).status == "online"
        assert await health.session_failed("be-a", "proxy_dest_auth_temp_failed") is False
        assert await health.session_failed("be-a", "proxy_dest_connect_failed") is True
        assert await health.session_failed("be-b", "proxy_dest_connect_failed") is False
        assert await health.take_offline("be-b", "test") is True
        assert await health.take_offline("be-c", "test") is True
        assert await health.take_offline("be-unknown", "test") is False
        stored = {b.host: b for b in await db.backend_list(site.id)}
        view = await router.site_view()
    finally:
        await engine.close()
    assert stored["be-a"].status == "offline"
    assert stored["be-a"].status_reason == "proxy px1: 2 failures within 10s, last proxy_dest_connect_failed"
    assert (stored["be-b"].status, stored["be-b"].status_reason) == ("standby", "admin")
    assert (stored["be-c"].status, stored["be-c"].status_reason) == ("offline", "admin")
    assert view.backend_by_host("be-a").status == "offline", "the cached site view was not dropped"
    assert health.marked_offline.value(dest_host="be-a") == 1 and health.marked_offline.value(dest_host="be-b") == 0
