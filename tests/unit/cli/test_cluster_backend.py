"""`palomar cluster backend ...` through the real CLI entry point on a SQLite GeoDB."""

from __future__ import annotations

import uuid

from cluster_harness import Cluster


def test_backend_add_self_uses_config_and_real_resolver(cluster: Cluster) -> None:
    cluster.ok("site", "add", "east")
    backend_id = uuid.UUID(cluster.ok("backend", "add", "--self").strip())
    backend = cluster.db(lambda db: db.backend_find_by_host("localhost"))
    east = cluster.db(lambda db: db.site_get_by_name("east"))
    assert (backend.id, backend.site_id) == (backend_id, east.id)


def test_new_backend_is_standby_with_load_factor_100(two_sites: Cluster) -> None:
    status = two_sites.json("backend", "status", "b1.test")
    assert (status["status"], status["load_factor"], status["site"]) == ("standby", 100, "east")
    assert status["force_move_id"] is None
    assert status["status_changed"] is not None


def test_backend_add_with_id_and_site(two_sites: Cluster) -> None:
    given = uuid.uuid4()
    created = two_sites.json("backend", "add", "--id", str(given), "--site", "west", "localhost")
    assert created == {"host": "localhost", "id": str(given), "site": "west", "status": "standby"}
    assert two_sites.db(lambda db: db.backend_find_by_host("localhost")).id == given


def test_backend_add_accepts_ip_literals_normalised(two_sites: Cluster) -> None:
    assert two_sites.json("backend", "add", "127.0.0.7")["host"] == "127.0.0.7"
    assert two_sites.json("backend", "add", "[0:0::1]")["host"] == "::1"
    assert two_sites.fails("backend", "add", "::1") == "backend '::1' already exists"


def test_backend_add_rejects_unresolvable_duplicates_and_bad_ids(two_sites: Cluster) -> None:
    assert "does not resolve" in two_sites.fails("backend", "add", "no-such-host.invalid")
    assert "not a valid host name" in two_sites.fails("backend", "add", "bad_-.host..")
    assert two_sites.fails("backend", "add", "b1.test") == "backend 'b1.test' already exists"
    assert two_sites.fails("backend", "add", "--site", "west", "B1.TEST") == (
        "backend 'b1.test' already exists"
    )
    b1 = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))
    assert two_sites.fails("backend", "add", "--id", str(b1.id), "--site", "west", "localhost") == (
        f"a backend with ID {b1.id} already exists"
    )
    assert "not a UUID" in two_sites.fails("backend", "add", "--id", "1234", "localhost")
    assert two_sites.fails("backend", "add", "--site", "mars", "localhost") == "site 'mars' does not exist"
    assert len(two_sites.json("backend", "list")) == 3


def test_backend_list_all_and_per_site(two_sites: Cluster) -> None:
    listed = two_sites.json("backend", "list")
    assert sorted((b["host"], b["site"]) for b in listed) == [
        ("b1.test", "east"),
        ("b2.test", "east"),
        ("b3.test", "west"),
    ]
    assert [b["host"] for b in two_sites.json("backend", "list", "--site", "west")] == ["b3.test"]
    table = two_sites.ok("backend", "list", "--site", "east").splitlines()
    assert table[0].split()[:2] == ["HOST", "SITE"]
    assert [line.split()[0] for line in table[1:]] == ["b1.test", "b2.test"]
    assert two_sites.fails("backend", "list", "--site", "mars") == "site 'mars' does not exist"


def test_backend_update_status_and_load_factor(two_sites: Cluster) -> None:
    before = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))
    two_sites.ok("backend", "update", "--status", "online", "--load-factor", "0", "b1.test")
    after = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))
    assert (after.status, after.load_factor, after.status_reason) == ("online", 0, "admin")
    assert after.status_changed_us > before.status_changed_us
    two_sites.ok("backend", "update", "--load-factor", "100", "b1.test")
    assert two_sites.db(lambda db: db.backend_find_by_host("b1.test")).load_factor == 100


def test_backend_update_errors(two_sites: Cluster) -> None:
    assert "load factor 101" in two_sites.fails("backend", "update", "--load-factor", "101", "b1.test")
    assert "load factor -1" in two_sites.fails("backend", "update", "--load-factor", "-1", "b1.test")
    assert "load factor 'x'" in two_sites.fails("backend", "update", "--load-factor", "x", "b1.test")
    assert "invalid backend status 'evacuate'" in two_sites.fails(
        "backend", "update", "--status", "evacuate", "b1.test"
    )
    assert two_sites.fails("backend", "update", "b1.test").startswith("nothing to update")
    assert two_sites.fails("backend", "update", "--status", "online", "x.test") == (
        "backend 'x.test' does not exist"
    )
    assert two_sites.db(lambda db: db.backend_find_by_host("b1.test")).load_factor == 100


def test_backend_status_change_resets_force_move(two_sites: Cluster) -> None:
    two_sites.ok("backend", "force-move", "start", "b1.test", "30", "b2.test")
    assert two_sites.json("backend", "status", "b1.test")["force_move_dest"] == ["b2.test"]
    two_sites.ok("backend", "update", "--status", "offline", "b1.test")
    status = two_sites.json("backend", "status", "b1.test")
    assert status["status"] == "offline"
    assert (status["force_move_id"], status["force_move_percentage"]) == (None, None)


def test_backend_load_factor_change_keeps_force_move(two_sites: Cluster) -> None:
    two_sites.ok("backend", "force-move", "start", "b1.test", "30", "b2.test")
    two_sites.ok("backend", "update", "--load-factor", "50", "b1.test")
    assert two_sites.json("backend", "status", "b1.test")["force_move_percentage"] == 30


def test_backend_force_move_lifecycle(two_sites: Cluster) -> None:
    given = uuid.uuid4()
    two_sites.ok("backend", "force-move", "start", "--id", str(given), "b1.test", "5", "b2.test")
    fm = two_sites.db(lambda db: db.backend_find_by_host("b1.test")).force_move
    assert (fm.id, fm.percentage, fm.dest) == (given, 5, ("b2.test",))
    two_sites.ok("backend", "force-move", "update", "b1.test", "50")
    fm = two_sites.db(lambda db: db.backend_find_by_host("b1.test")).force_move
    assert (fm.id, fm.percentage) == (given, 50)
    assert "50% -> b2.test" in two_sites.ok("backend", "list")
    two_sites.ok("backend", "force-move", "stop", "b1.test")
    assert two_sites.db(lambda db: db.backend_find_by_host("b1.test")).force_move is None


def test_backend_force_move_errors(two_sites: Cluster) -> None:
    assert "percentage 101" in two_sites.fails("backend", "force-move", "start", "b1.test", "101", "b2.test")
    assert "percentage -1" in two_sites.fails("backend", "force-move", "start", "b1.test", "-1", "b2.test")
    other_site = two_sites.fails("backend", "force-move", "start", "b1.test", "5", "b3.test")
    assert "not in the same site" in other_site
    assert "itself" in two_sites.fails("backend", "force-move", "start", "b1.test", "5", "b1.test")
    assert two_sites.fails("backend", "force-move", "start", "b1.test", "5", "zz.test") == (
        "backend 'zz.test' does not exist"
    )
    assert "no force-move running" in two_sites.fails("backend", "force-move", "update", "b1.test", "5")
    assert two_sites.fails("backend", "force-move", "stop", "zz.test") == "backend 'zz.test' does not exist"


def test_backend_status_shows_groups_and_stats(two_sites: Cluster) -> None:
    from palomar.cluster.model import Group, Stat

    b1 = two_sites.db(lambda db: db.backend_find_by_host("b1.test"))

    async def seed(db) -> None:
        await db.group_create_if_absent(Group(b1.site_id, "default-1", backend_id=b1.id))
        await db.backend_stats_put(b1.site_id, b1.id, [Stat("cpu", 0.75, "gauge")])

    two_sites.db(seed)
    status = two_sites.json("backend", "status", "b1.test")
    assert (status["groups"], status["stats"]) == (1, {"cpu": 0.75})
    assert "stat cpu:" in two_sites.ok("backend", "status", "b1.test")


def test_backend_remove_and_self(two_sites: Cluster) -> None:
    two_sites.ok("backend", "remove", "b2.test")
    assert [b["host"] for b in two_sites.json("backend", "list", "--site", "east")] == ["b1.test"]
    assert two_sites.fails("backend", "remove", "b2.test") == "backend 'b2.test' does not exist"
    assert two_sites.fails("backend", "status", "--self") == "backend 'localhost' does not exist"
    two_sites.ok("backend", "add", "--self")
    assert two_sites.json("backend", "status", "--self")["host"] == "localhost"
    two_sites.ok("backend", "update", "--self", "--status", "online")
    two_sites.ok("backend", "remove", "--self")
    assert "localhost" not in [b["host"] for b in two_sites.json("backend", "list")]
    assert "not both" in two_sites.fails("backend", "remove", "--self", "b1.test")
