"""`palomar cluster user access`: the proxy's routing answer, computed without writing anything."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster_harness import Cluster
from palomar.cluster.hashing import default_group_name
from palomar.cluster.model import Group
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB
from palomar.proxy.router import Router


@pytest.fixture
def online(two_sites: Cluster) -> Cluster:
    """b1 and b2 online in east (group count 4), b3 online in west."""
    for host in ("b1.test", "b2.test", "b3.test"):
        two_sites.ok("backend", "update", "--status", "online", host)
    return two_sites


def _access(cluster: Cluster, *args: str) -> list[dict]:
    return cluster.json("user", "access", *args)


def _proxy_routes(cluster: Cluster, username: str) -> str | None:
    """Route `username` the way a proxy of site east does (with its writes)."""

    async def go() -> str | None:
        engine = open_engine("sqlite", path=str(cluster.geodb_path))
        await engine.open()
        db = GeoDB(engine)
        try:
            router = Router(db, LocalDB(str(cluster.localdb_path)), site_name="east", group_count=4)
            return (await router.route(username)).host
        finally:
            await db.close()

    return asyncio.run(go())


def test_new_user_shows_group_and_backend_and_writes_nothing(online: Cluster) -> None:
    [record] = _access(online, "-u", "alice")
    group = default_group_name("alice", 4)
    assert (record["user"], record["site"], record["group"], record["via"]) == ("alice", "east", group, "group")
    assert record["new_user"] is True and record["error"] is None
    assert record["pending"] == f"new user joins {group}; homed in east; group gets backend {record['backend']}"
    assert online.db(lambda db: db.user_get("alice")) is None
    east = online.db(lambda db: db.site_get_by_name("east"))
    assert online.db(lambda db: db.group_get(east.id, group)) is None
    assert _proxy_routes(online, "alice") == record["backend"]
    [again] = _access(online, "-u", "alice")
    assert (again["backend"], again["new_user"], again["pending"]) == (record["backend"], False, None)


def test_failover_is_predicted_not_written(online: Cluster) -> None:
    b1 = online.db(lambda db: db.backend_find_by_host("b1.test"))
    b2 = online.db(lambda db: db.backend_find_by_host("b2.test"))
    online.db(lambda db: db.group_create_if_absent(Group(b1.site_id, "team", backend_id=b1.id,
                                                         alt_backend_id=b2.id)))
    online.db(lambda db: db.user_put("bob", group_name="team"))
    assert [r["backend"] for r in _access(online, "-u", "bob")] == ["b1.test"]
    online.ok("backend", "update", "--status", "offline", "b1.test")
    [record] = _access(online, "-u", "bob")
    assert (record["backend"], record["pending"]) == ("b2.test", "homed in east; group fails over from b1.test")
    assert online.db(lambda db: db.group_get(b1.site_id, "team")).backend_id == b1.id
    assert _proxy_routes(online, "bob") == "b2.test"


def test_preferred_site_routes_in_that_site(online: Cluster) -> None:
    west = online.db(lambda db: db.site_get_by_name("west"))
    online.db(lambda db: db.user_put("carol", group_name="default-1", preferred_site_id=west.id))
    [record] = _access(online, "-u", "carol")
    assert (record["site"], record["backend"]) == ("west", "b3.test")


def test_ip_all_users_and_file(online: Cluster, tmp_path: Path) -> None:
    for name in ("dave", "erin"):
        online.db(lambda db, name=name: db.user_put(name, group_name="default-1"))
    table = online.ok("user", "access", "-i", "-u", "dave").splitlines()
    assert table[0].split() == ["USER", "SITE", "GROUP", "BACKEND", "IP", "VIA", "PENDING"]
    host = table[1].split()[3]
    assert table[1].split()[4] == {"b1.test": "127.0.0.11", "b2.test": "127.0.0.12"}[host]
    assert [r["user"] for r in _access(online, "-A")] == ["dave", "erin"]
    users = tmp_path / "users.txt"
    users.write_text("erin\n\n  zed  \n")
    records = _access(online, "-F", str(users))
    assert [(r["user"], r["new_user"]) for r in records] == [("erin", False), ("zed", True)]
    assert online.db(lambda db: db.user_get("zed")) is None


def test_unroutable_users_are_listed_and_the_exit_status_says_so(two_sites: Cluster) -> None:
    result = two_sites.run("user", "access", "-u", "frank")
    assert result.exit_code == 1
    assert "frank" in result.stdout and "no online backend for group" in result.stdout
    assert result.stderr.strip() == "palomar cluster: 1 user(s) cannot be routed now: frank"


def test_access_argument_errors(online: Cluster, tmp_path: Path) -> None:
    assert online.fails("user", "access") == "give exactly one of -u USER, -A or -F FILE"
    assert online.fails("user", "access", "-A", "-u", "x") == "give exactly one of -u USER, -A or -F FILE"
    missing = tmp_path / "nope.txt"
    assert online.fails("user", "access", "-F", str(missing)) == f"cannot read {missing}: No such file or directory"
    assert online.fails("user", "access", "-u", " ") == "empty user name"
