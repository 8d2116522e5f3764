"""`palomar cluster group ...` and `user ...` through the real CLI entry point on a SQLite GeoDB."""

from __future__ import annotations

import pytest

from cluster_harness import Cluster
from palomar.cluster.model import Group


@pytest.fixture
def groups(two_sites: Cluster) -> Cluster:
    """default-1 and default-2 in east, owned by b1.test (alt b2.test); default-1 in west on b3.test."""
    b1 = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))
    b2 = two_sites.db(lambda db: db.backend_find_by_host("b2.test"))
    b3 = two_sites.db(lambda db: db.backend_find_by_host("b3.test"))

    async def seed(db) -> None:
        for name in ("default-1", "default-2"):
            await db.group_create_if_absent(Group(b1.site_id, name, backend_id=b1.id, alt_backend_id=b2.id))
        await db.group_create_if_absent(Group(b3.site_id, "default-1", backend_id=b3.id))

    two_sites.db(seed)
    return two_sites


def _group(cluster: Cluster, site: str, name: str) -> Group:
    async def read(db) -> Group:
        return await db.group_get((await db.site_get_by_name(site)).id, name)

    return cluster.db(read)


def test_group_move_writes_alt_backend_and_moving_only(groups: Cluster) -> None:
    b1 = groups.db(lambda db: db.backend_find_by_host("b1.test"))
    b2 = groups.db(lambda db: db.backend_find_by_host("b2.test"))
    groups.ok("group", "move", "east", "default-1", "b2.test")
    moved = _group(groups, "east", "default-1")
    assert (moved.backend_id, moved.alt_backend_id) == (b1.id, b2.id)
    assert moved.moving
    status = groups.json("group", "status", "east", "default-1")
    assert (status["backend"], status["alt_backend"], status["moving"]) == (
        ("b1.test", "b2.test", moved.moving)
    )
    groups.ok("group", "move", "east", "default-1", "b2.test")
    assert _group(groups, "east", "default-1").moving == moved.moving
    assert not _group(groups, "east", "default-2").moving


def test_group_move_direct_rewrites_backend_id_only(groups: Cluster) -> None:
    b2 = groups.db(lambda db: db.backend_find_by_host("b2.test"))
    before = _group(groups, "east", "default-2")
    groups.ok("group", "move", "--direct", "east", "default-2", "b2.test")
    after = _group(groups, "east", "default-2")
    assert after.backend_id == b2.id
    assert (after.alt_backend_id, after.moving) == (before.alt_backend_id, None)
    assert after.backend_changed_us > before.backend_changed_us


def test_group_move_of_unowned_group_assigns_directly(groups: Cluster) -> None:
    groups.ok("site", "init", "east")
    b2 = groups.db(lambda db: db.backend_find_by_host("b2.test"))
    groups.ok("group", "move", "east", "default-3", "b2.test")
    placed = _group(groups, "east", "default-3")
    assert (placed.backend_id, placed.moving) == (b2.id, None)


def test_group_move_errors(groups: Cluster) -> None:
    assert groups.fails("group", "move", "east", "default-9", "b2.test") == (
        "group 'default-9' does not exist in site 'east'"
    )
    assert groups.fails("group", "move", "mars", "default-1", "b2.test") == "site 'mars' does not exist"
    assert groups.fails("group", "move", "east", "default-1", "zz.test") == "backend 'zz.test' does not exist"
    assert groups.fails("group", "move", "east", "default-1", "b3.test") == (
        "backend 'b3.test' is not in site 'east'"
    )
    assert "already on backend 'b1.test'" in groups.fails("group", "move", "east", "default-1", "b1.test")
    groups.ok("group", "move", "east", "default-1", "b2.test")
    groups.ok("backend", "add", "localhost")
    assert "already moving" in groups.fails("group", "move", "east", "default-1", "localhost")
    assert not _group(groups, "east", "default-2").moving


def test_group_update_sticky_flags(groups: Cluster) -> None:
    groups.ok("group", "update", "--sticky-users", "yes", "east", "default-1")
    g = _group(groups, "east", "default-1")
    assert (g.sticky_users, g.sticky_backend) == (True, False)
    groups.ok("group", "update", "--sticky-users", "no", "--sticky-backend", "yes", "east", "default-1")
    g = _group(groups, "east", "default-1")
    assert (g.sticky_users, g.sticky_backend) == (False, True)
    assert "expected yes or no" in (
        groups.fails("group", "update", "--sticky-users", "maybe", "east", "default-1")
    )
    assert groups.fails("group", "update", "east", "default-1").startswith("nothing to update")
    assert "does not exist" in groups.fails("group", "update", "--sticky-users", "yes", "east", "nope")


def test_group_update_refresh_after(groups: Cluster) -> None:
    groups.ok("group", "update", "--refresh-after", "2", "east", "default-1")
    assert _group(groups, "east", "default-1").refresh_after == 2
    assert groups.json("group", "status", "east", "default-1")["refresh_after"] == 2
    for bad in ("0", "-1", "soon", "2147483648"):
        assert "refresh-after" in groups.fails("group", "update", "--refresh-after", bad, "east", "default-1")
    groups.ok("group", "update", "--refresh-after", "default", "east", "default-1")
    assert _group(groups, "east", "default-1").refresh_after is None


def test_group_list_all_site_and_mask(groups: Cluster) -> None:
    groups.ok("site", "init", "east")
    every = groups.json("group", "list")
    assert sorted((g["site"], g["name"]) for g in every) == [
        ("east", "default-1"),
        ("east", "default-2"),
        ("east", "default-3"),
        ("east", "default-4"),
        ("west", "default-1"),
    ]
    assert [g["name"] for g in groups.json("group", "list", "--site", "east", "default-[12]")] == [
        "default-1",
        "default-2",
    ]
    assert [g["site"] for g in groups.json("group", "list", "*-1")] == ["east", "west"]
    table = groups.ok("group", "list", "--site", "west").splitlines()
    assert table[1].split()[:4] == ["west", "default-1", "b3.test", "-"]
    assert groups.ok("group", "list", "nomatch*") == ""
    assert groups.json("group", "list", "nomatch*") == []


def test_group_status_errors(groups: Cluster) -> None:
    assert groups.fails("group", "status", "west", "default-2") == (
        "group 'default-2' does not exist in site 'west'"
    )
    assert "backend:" in groups.ok("group", "status", "west", "default-1")


def test_user_move_writes_moving_columns(groups: Cluster) -> None:
    east = groups.db(lambda db: db.site_get_by_name("east"))
    west = groups.db(lambda db: db.site_get_by_name("west"))
    groups.db(lambda db: db.user_put("alice", group_name="default-1", preferred_site_id=east.id))
    groups.ok("user", "move", "--site", "west", "alice", "default-1", "default-2")
    alice = groups.db(lambda db: db.user_get("alice"))
    assert (alice.group_name, alice.preferred_site_id) == ("default-1", east.id)
    assert (alice.moving_group_name, alice.moving_preferred_site_id) == ("default-1", west.id)
    assert alice.moving_failover_site_group_name == "default-2"
    status = groups.json("user", "status", "alice")
    assert (status["site"], status["moving_site"], status["moving_group"]) == ("east", "west", "default-1")


def test_user_move_defaults_to_the_users_site(groups: Cluster) -> None:
    west = groups.db(lambda db: db.site_get_by_name("west"))
    groups.db(lambda db: db.user_put("bob", group_name="default-1", preferred_site_id=west.id))
    groups.ok("user", "move", "bob", "vip")
    bob = groups.db(lambda db: db.user_get("bob"))
    assert (bob.moving_group_name, bob.moving_preferred_site_id, bob.group_name) == (
        ("vip", west.id, "default-1")
    )


def test_user_move_direct_writes_placement_and_clears_moving(groups: Cluster) -> None:
    east = groups.db(lambda db: db.site_get_by_name("east"))
    groups.ok("user", "move", "--direct", "carol", "default-2", "fail-1")
    carol = groups.db(lambda db: db.user_get("carol"))
    assert (carol.group_name, carol.preferred_site_id, carol.failover_site_group_name) == (
        "default-2",
        east.id,
        "fail-1",
    )
    assert not carol.moving
    groups.ok("user", "move", "carol", "default-1")
    assert groups.db(lambda db: db.user_get("carol")).moving
    groups.ok("user", "move", "--direct", "carol", "default-1")
    carol = groups.db(lambda db: db.user_get("carol"))
    assert (carol.group_name, carol.failover_site_group_name, carol.moving) == ("default-1", "fail-1", False)


def test_user_move_errors(groups: Cluster) -> None:
    assert "does not exist (use --direct" in groups.fails("user", "move", "nobody", "default-1")
    assert groups.fails("user", "move", "--direct", "--site", "mars", "x", "g") == (
        "site 'mars' does not exist"
    )
    assert "invalid group name" in groups.fails("user", "move", "--direct", "x", "a b")
    assert groups.db(lambda db: db.user_get("x")) is None


def test_user_status_list_and_delete(groups: Cluster) -> None:
    for name in ("alice", "bob", "alan"):
        groups.ok("user", "move", "--direct", name, "default-1")
    assert [u["username"] for u in groups.json("user", "list")] == ["alan", "alice", "bob"]
    assert [u["username"] for u in groups.json("user", "list", "al*")] == ["alan", "alice"]
    table = groups.ok("user", "list", "bob").splitlines()
    assert table[0].split()[0] == "USERNAME" and table[1].split()[:3] == ["bob", "east", "default-1"]
    assert "group:" in groups.ok("user", "status", "bob")
    groups.ok("user", "delete", "bob")
    assert groups.fails("user", "status", "bob") == "user 'bob' does not exist"
    assert groups.fails("user", "delete", "bob") == "user 'bob' does not exist"
    assert [u["username"] for u in groups.json("user", "list")] == ["alan", "alice"]


def test_group_site_set_list_remove(groups: Cluster) -> None:
    groups.ok("group", "site", "set", "--failover-site", "west", "east", "default-1")
    [row] = groups.json("group", "site", "list", "default-1")
    assert (row["site"], row["status"], row["failover_site"]) == ("east", "follow", "west")
    groups.ok("group", "site", "set", "--status", "failover", "east", "default-1")
    [row] = groups.json("group", "site", "list", "default-1")
    assert (row["status"], row["failover_site"]) == ("failover", "west")  # the failover site is kept

    async def stored(db):
        east = await db.site_get_by_name("east")
        return await db.group_site_get("default-1", east.id)

    entry = groups.db(stored)
    west = groups.db(lambda db: db.site_get_by_name("west"))
    assert (entry.status, entry.failover_site_id) == (1, west.id)
    groups.ok("group", "site", "set", "--no-failover-site", "--status", "follow", "east", "default-1")
    assert groups.db(stored).failover_site_id is None and groups.db(stored).status == 0
    groups.ok("group", "site", "remove", "east", "default-1")
    assert groups.db(stored) is None
    assert groups.json("group", "site", "list", "default-1") == []


def test_group_site_errors(groups: Cluster) -> None:
    assert groups.fails("group", "site", "set", "east", "default-1").startswith("nothing to set")
    assert "its own site" in groups.fails("group", "site", "set", "--failover-site", "east", "east", "default-1")
    assert "does not exist" in groups.fails("group", "site", "set", "--failover-site", "nowhere", "east", "g")
    assert "has no row" in groups.fails("group", "site", "remove", "east", "default-1")
    assert "invalid" in groups.fails("group", "site", "set", "--status", "follow", "east", "a/b")
