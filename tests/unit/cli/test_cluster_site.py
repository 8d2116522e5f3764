"""`palomar cluster site ...` through the real CLI entry point on a SQLite GeoDB."""

from __future__ import annotations

import uuid

from cluster_harness import Cluster
from palomar.cluster.model import ForceMove, Group


def test_site_add_creates_online_site_and_prints_its_id(cluster: Cluster) -> None:
    out = cluster.ok("site", "add", "east")
    site_id = uuid.UUID(out.strip())
    site = cluster.db(lambda db: db.site_get(site_id))
    assert (site.name, site.status, site.load_balancer) == ("east", "online", None)


def test_site_add_with_id_tag_and_load_balancer(cluster: Cluster) -> None:
    tag_id = uuid.UUID(cluster.ok("tag", "create", "shard-a").strip())
    given = uuid.uuid4()
    created = cluster.json(
        "site", "add", "--id", str(given), "--tag", "shard-a", "--load-balancer", "lb:143", "x"
    )
    assert created == {"name": "x", "id": str(given), "status": "online"}
    status = cluster.json("site", "status", "x")
    assert (status["tag"], status["load_balancer"], status["status"]) == ("shard-a", "lb:143", "online")
    assert cluster.db(lambda db: db.site_get(given)).tag == tag_id


def test_site_add_rejects_duplicates_bad_ids_and_unknown_tags(cluster: Cluster) -> None:
    site_id = cluster.ok("site", "add", "east").strip()
    assert cluster.fails("site", "add", "east") == "site 'east' already exists"
    assert cluster.fails("site", "add", "--id", site_id, "other") == (
        f"a site with ID {site_id} already exists"
    )
    assert "not a UUID" in cluster.fails("site", "add", "--id", "not-a-uuid", "other")
    assert cluster.fails("site", "add", "--tag", "nope", "other") == "tag 'nope' does not exist"
    assert "invalid site name" in cluster.fails("site", "add", "bad name")
    assert [s["name"] for s in cluster.json("site", "list")] == ["east"]


def test_site_list_table_and_json(two_sites: Cluster) -> None:
    table = two_sites.ok("site", "list").splitlines()
    assert table[0].split()[:3] == ["NAME", "ID", "STATUS"]
    assert [line.split()[0] for line in table[1:]] == ["east", "west"]
    listed = two_sites.json("site", "list")
    assert [(s["name"], s["status"], s["load_balancer"]) for s in listed] == [
        ("east", "online", None),
        ("west", "online", "lb.west.test:143"),
    ]


def test_site_status_counts_backends_and_groups(two_sites: Cluster) -> None:
    status = two_sites.json("site", "status", "east")
    assert (status["name"], status["backends"], status["backends_online"], status["groups"]) == (
        ("east", 2, 0, 0)
    )
    human = two_sites.ok("site", "status", "west")
    assert "load_balancer:" in human and "lb.west.test:143" in human
    assert two_sites.fails("site", "status", "north") == "site 'north' does not exist"


def test_site_remove(two_sites: Cluster) -> None:
    two_sites.ok("site", "remove", "west")
    assert [s["name"] for s in two_sites.json("site", "list")] == ["east"]
    assert two_sites.fails("site", "remove", "west") == "site 'west' does not exist"


def test_site_update_status_resets_force_move(two_sites: Cluster) -> None:
    two_sites.ok("site", "force-move", "start", "east", "25", "west")
    assert two_sites.json("site", "status", "east")["force_move_percentage"] == 25
    two_sites.ok("site", "update", "--status", "evacuate", "east")
    status = two_sites.json("site", "status", "east")
    assert status["status"] == "evacuate"
    assert status["force_move_id"] is None and status["force_move_dest"] == []


def test_site_update_same_status_keeps_force_move(two_sites: Cluster) -> None:
    two_sites.ok("site", "force-move", "start", "east", "25", "west")
    two_sites.ok("site", "update", "--status", "online", "east")
    assert two_sites.json("site", "status", "east")["force_move_percentage"] == 25


def test_site_update_self_load_balancer_and_rename(two_sites: Cluster) -> None:
    two_sites.ok("site", "update", "--load-balancer", "lb.east.test", "--self")
    assert two_sites.json("site", "status", "east")["load_balancer"] == "lb.east.test"
    assert two_sites.fails("site", "update", "--name", "west", "east") == "site 'west' already exists"
    two_sites.ok("site", "update", "--name", "east2", "east")
    assert [s["name"] for s in two_sites.json("site", "list")] == ["east2", "west"]


def test_site_update_errors(two_sites: Cluster) -> None:
    assert "invalid site status 'down'" in two_sites.fails("site", "update", "--status", "down", "east")
    assert two_sites.fails("site", "update", "east").startswith("nothing to update")
    assert two_sites.fails("site", "update", "--status", "offline").startswith("missing site name")
    assert "not both" in two_sites.fails("site", "update", "--status", "offline", "--self", "east")
    assert two_sites.fails("site", "update", "--status", "offline", "nope") == "site 'nope' does not exist"


def test_site_init_creates_default_groups_idempotently(two_sites: Cluster) -> None:
    result = two_sites.json("site", "init", "--self")
    assert (result["created"], result["groups"]) == (4, 4)
    groups = two_sites.json("group", "list", "--site", "east")
    assert [g["name"] for g in groups] == ["default-1", "default-2", "default-3", "default-4"]
    assert "0 of 4 default groups created" in two_sites.ok("site", "init", "east")
    assert two_sites.json("group", "list", "--site", "west") == []


def test_site_init_update_recreates_pool_and_unassigns_users(two_sites: Cluster) -> None:
    east = two_sites.db(lambda db: db.site_get_by_name("east"))
    b1 = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))

    async def seed(db) -> None:
        await db.group_create_if_absent(Group(east.id, "default-7", backend_id=b1.id))
        await db.group_create_if_absent(Group(east.id, "vip", backend_id=b1.id))
        await db.user_put("alice", group_name="default-7", preferred_site_id=east.id)
        await db.user_put("bob", group_name="vip", preferred_site_id=east.id)

    two_sites.db(seed)
    result = two_sites.run("site", "init", "--update", "east")
    assert result.exit_code == 0
    assert "warning" in result.stderr and "unassigns" in result.stderr
    assert "1 deleted, 1 users unassigned" in result.stdout
    names = [g["name"] for g in two_sites.json("group", "list", "--site", "east")]
    assert names == ["default-1", "default-2", "default-3", "default-4", "vip"]
    assert two_sites.db(lambda db: db.user_get("alice")).group_name is None
    assert two_sites.db(lambda db: db.user_get("bob")).group_name == "vip"


def test_site_force_move_lifecycle(two_sites: Cluster) -> None:
    given = str(uuid.uuid4())
    two_sites.ok("site", "force-move", "start", "--id", given, "east", "10", "west")
    west = two_sites.db(lambda db: db.site_get_by_name("west"))
    east = two_sites.db(lambda db: db.site_get_by_name("east"))
    assert east.force_move == ForceMove(uuid.UUID(given), 10, (str(west.id),))
    assert two_sites.json("site", "status", "east")["force_move_dest"] == ["west"]
    two_sites.ok("site", "force-move", "update", "east", "40")
    moved = two_sites.db(lambda db: db.site_get_by_name("east")).force_move
    assert (moved.id, moved.percentage) == (uuid.UUID(given), 40)
    two_sites.ok("site", "force-move", "stop", "east")
    assert two_sites.db(lambda db: db.site_get_by_name("east")).force_move is None
    two_sites.ok("site", "force-move", "stop", "east")


def test_site_force_move_errors(two_sites: Cluster) -> None:
    assert "percentage -1" in two_sites.fails("site", "force-move", "start", "east", "-1", "west")
    assert "percentage 101" in two_sites.fails("site", "force-move", "start", "east", "101", "west")
    assert "itself" in two_sites.fails("site", "force-move", "start", "east", "5", "east")
    assert two_sites.fails("site", "force-move", "start", "east", "5", "mars") == "site 'mars' does not exist"
    assert "no force-move running" in two_sites.fails("site", "force-move", "update", "east", "5")
    assert "not a UUID" in two_sites.fails("site", "force-move", "start", "--id", "zz", "east", "5", "west")


def test_site_recover_keeps_salt_and_ends_at_100(two_sites: Cluster) -> None:
    two_sites.ok("site", "recover", "east", "10")
    first = two_sites.db(lambda db: db.site_get_by_name("east"))
    assert first.recover_percentage == 10 and first.recover_id is not None
    two_sites.ok("site", "recover", "east", "50")
    second = two_sites.db(lambda db: db.site_get_by_name("east"))
    assert (second.recover_id, second.recover_percentage) == (first.recover_id, 50)
    given = uuid.uuid4()
    two_sites.ok("site", "recover", "--id", str(given), "east", "60")
    assert two_sites.db(lambda db: db.site_get_by_name("east")).recover_id == given
    two_sites.ok("site", "recover", "east", "100")
    done = two_sites.db(lambda db: db.site_get_by_name("east"))
    assert (done.recover_id, done.recover_percentage) == (None, None)
    assert "percentage" in two_sites.fails("site", "recover", "east", "x")


def test_site_reachability_list(two_sites: Cluster) -> None:
    east = two_sites.db(lambda db: db.site_get_by_name("east"))
    west = two_sites.db(lambda db: db.site_get_by_name("west"))

    async def seed(db) -> None:
        await db.reachability_set(east.id, west.id, True)
        await db.reachability_set(west.id, east.id, False)

    two_sites.db(seed)
    assert two_sites.json("site", "reachability", "list") == [
        {"src": "east", "dest": "west", "reachable": True},
        {"src": "west", "dest": "east", "reachable": False},
    ]
    assert two_sites.json("site", "reachability", "list", "west") == [
        {"src": "west", "dest": "east", "reachable": False}
    ]
    assert two_sites.json("site", "reachability", "list", "east", "east") == []
    table = two_sites.ok("site", "reachability", "list", "east", "west").splitlines()
    assert table[1].split() == ["east", "west", "yes"]
    assert two_sites.fails("site", "reachability", "list", "mars") == "site 'mars' does not exist"
