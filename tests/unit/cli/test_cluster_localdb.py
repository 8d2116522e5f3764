"""`palomar cluster localdb ...` on a real LocalDB file named by cluster_localdb_path."""

from __future__ import annotations

import pytest

from cluster_harness import Cluster
from palomar.localdb import LocalDB


@pytest.fixture
def local(cluster: Cluster) -> Cluster:
    with LocalDB(str(cluster.localdb_path)) as db:
        db.user_put("default-1", "alice", redirect_host="b2.test", now=1_700_000_000)
        db.user_put("default-1", "bob", now=1_700_000_001)
        db.user_put("default-2", "alan", redirect_host="b1.test", redirect_group="vip", now=1_700_000_002)
        db.group_put("default-1", redirect_host="b2.test", now=1_700_000_003)
        db.group_put("vip", now=1_700_000_004)
    return cluster


def test_localdb_user_status_and_list(local: Cluster) -> None:
    assert local.json("localdb", "user", "status", "default-1", "alice") == {
        "group": "default-1",
        "username": "alice",
        "redirect_host": "b2.test",
        "redirect_group": None,
        "last_update": 1_700_000_000,
    }
    assert "redirect_host:" in local.ok("localdb", "user", "status", "default-2", "alan")
    assert [(u["group"], u["username"]) for u in local.json("localdb", "user", "list")] == [
        ("default-1", "alice"),
        ("default-1", "bob"),
        ("default-2", "alan"),
    ]
    assert [u["username"] for u in local.json("localdb", "user", "list", "al*")] == ["alice", "alan"]
    table = local.ok("localdb", "user", "list", "bob").splitlines()
    assert table[0].split()[:2] == ["GROUP", "USERNAME"] and table[1].split()[:2] == ["default-1", "bob"]
    assert local.fails("localdb", "user", "status", "default-2", "alice") == (
        "user 'alice' of group 'default-2' is not in the LocalDB"
    )


def test_localdb_user_remove(local: Cluster) -> None:
    local.ok("localdb", "user", "remove", "default-1", "alice")
    assert [u["username"] for u in local.json("localdb", "user", "list")] == ["bob", "alan"]
    assert "not in the LocalDB" in local.fails("localdb", "user", "remove", "default-1", "alice")


def test_localdb_group_status_list_remove(local: Cluster) -> None:
    status = local.json("localdb", "group", "status", "default-1")
    assert (status["name"], status["redirect_host"]) == ("default-1", "b2.test")
    assert [g["name"] for g in local.json("localdb", "group", "list")] == ["default-1", "vip"]
    assert [g["name"] for g in local.json("localdb", "group", "list", "v?p")] == ["vip"]
    local.ok("localdb", "group", "remove", "vip")
    assert [g["name"] for g in local.json("localdb", "group", "list")] == ["default-1"]
    assert local.fails("localdb", "group", "remove", "vip") == "group 'vip' is not in the LocalDB"
    assert local.fails("localdb", "group", "status", "vip") == "group 'vip' is not in the LocalDB"


def test_localdb_missing_file_is_not_created(cluster: Cluster) -> None:
    assert cluster.fails("localdb", "group", "list").endswith("does not exist")
    assert not cluster.localdb_path.exists()


def test_localdb_unreadable_file_is_one_line(cluster: Cluster) -> None:
    cluster.localdb_path.write_bytes(b"not a database at all" * 50)
    assert "LocalDB" in cluster.fails("localdb", "user", "list")
