"""`palomar cluster tag ...` through the real CLI entry point on a SQLite GeoDB."""

from __future__ import annotations

import uuid

from cluster_harness import Cluster


def test_tag_create_list_and_json(cluster: Cluster) -> None:
    first = uuid.UUID(cluster.ok("tag", "create", "shard-b").strip())
    given = uuid.uuid4()
    assert cluster.json("tag", "create", "--id", str(given), "shard-a") == (
        {"name": "shard-a", "id": str(given)}
    )
    assert cluster.json("tag", "list") == [
        {"name": "shard-a", "id": str(given)},
        {"name": "shard-b", "id": str(first)},
    ]
    assert cluster.ok("tag", "list").splitlines()[0].split() == ["NAME", "ID"]


def test_tag_create_errors(cluster: Cluster) -> None:
    tag_id = cluster.ok("tag", "create", "t").strip()
    assert cluster.fails("tag", "create", "t") == "tag 't' already exists"
    assert cluster.fails("tag", "create", "--id", tag_id, "u") == f"a tag with ID {tag_id} already exists"
    assert "not a UUID" in cluster.fails("tag", "create", "--id", "xyz", "u")
    assert [t["name"] for t in cluster.json("tag", "list")] == ["t"]


def test_tag_update_by_name_and_id(cluster: Cluster) -> None:
    tag_id = cluster.ok("tag", "create", "old").strip()
    cluster.ok("tag", "create", "other")
    cluster.ok("tag", "update", "--name", "new", "old")
    assert cluster.db(lambda db: db.tag_get(uuid.UUID(tag_id))).name == "new"
    cluster.ok("tag", "update", "--name", "newer", tag_id)
    assert cluster.db(lambda db: db.tag_get(uuid.UUID(tag_id))).name == "newer"
    assert cluster.fails("tag", "update", "--name", "other", "newer") == "tag 'other' already exists"
    assert cluster.fails("tag", "update", "newer").startswith("nothing to update")
    assert cluster.fails("tag", "update", "--name", "x", "missing") == "tag 'missing' does not exist"


def test_tag_delete_and_remove_alias(cluster: Cluster) -> None:
    a = cluster.ok("tag", "create", "a").strip()
    cluster.ok("tag", "create", "b")
    cluster.ok("tag", "delete", a)
    cluster.ok("tag", "remove", "b")
    assert cluster.json("tag", "list") == []
    assert cluster.fails("tag", "delete", "a") == "tag 'a' does not exist"
    assert cluster.fails("tag", "remove", str(uuid.uuid4())).endswith("does not exist")
