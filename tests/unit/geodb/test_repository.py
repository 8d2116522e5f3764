"""GeoDB repository over the real SQLite engine: model in, model out, and the state rules it owns."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from palomar.cluster.model import (
    NO_ID,
    Backend,
    ForceMove,
    Group,
    ProxyDestStat,
    Reachability,
    Setting,
    Site,
    Stat,
    Tag,
    User,
)
from palomar.geodb import open_engine
from palomar.geodb.engine import GeoDBError
from palomar.geodb.repository import GeoDB, GroupSite, UserSite


@pytest.fixture
async def db(tmp_path) -> AsyncIterator[GeoDB]:
    engine = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"))
    await engine.open()
    repo = GeoDB(engine)
    yield repo
    await repo.close()


async def _site(db: GeoDB, name: str = "east", **kw) -> Site:
    site = Site(id=uuid.uuid4(), name=name, **kw)
    assert await db.site_add(site)
    return site


async def test_tags_roundtrip_and_unique_id(db: GeoDB) -> None:
    tag = Tag(id=uuid.uuid4(), name="shard-a")
    assert await db.tag_create(tag)
    assert not await db.tag_create(Tag(id=tag.id, name="other"))
    assert await db.tag_get(tag.id) == tag
    assert await db.tag_get_by_name("shard-a") == tag
    await db.tag_update(tag.id, "shard-b")
    assert await db.tag_get_by_name("shard-a") is None
    assert (await db.tag_get(tag.id)).name == "shard-b"
    other = Tag(id=uuid.uuid4(), name="aaa")
    await db.tag_create(other)
    assert [t.name for t in await db.tag_list()] == ["aaa", "shard-b"]
    await db.tag_delete(tag.id)
    assert await db.tag_get(tag.id) is None
    assert await db.tag_list() == [other]


async def test_site_roundtrip_and_lookup_by_name(db: GeoDB) -> None:
    tag = uuid.uuid4()
    site = await _site(db, "east", load_balancer="lb.east:143", tag=tag)
    assert await db.site_get(site.id) == site
    assert await db.site_get_by_name("east") == site
    assert await db.site_get_by_name("west") is None
    assert not await db.site_add(Site(id=site.id, name="dup"))
    await db.site_update(site.id, name="east2", load_balancer="lb2")
    got = await db.site_get(site.id)
    assert (got.name, got.load_balancer, got.status) == ("east2", "lb2", "online")
    with pytest.raises(TypeError):
        await db.site_update(site.id, status="offline")


async def test_site_status_change_clears_force_move_but_not_recover(db: GeoDB) -> None:
    site = await _site(db)
    dest = await _site(db, "west")
    fm = ForceMove(id=uuid.uuid4(), percentage=30, dest=(str(dest.id),))
    await db.site_force_move_set(site.id, fm)
    await db.site_recover_set(site.id, uuid.uuid4(), 40)
    assert (await db.site_get(site.id)).force_move == fm
    await db.site_set_status(site.id, "standby")
    got = await db.site_get(site.id)
    assert got.status == "standby"
    assert got.force_move is None
    assert got.recover_percentage == 40
    await db.site_recover_clear(site.id)
    assert (await db.site_get(site.id)).recover_id is None


async def test_site_remove_drops_its_reachability(db: GeoDB) -> None:
    a, b = await _site(db, "a"), await _site(db, "b")
    await db.reachability_set(a.id, b.id, True)
    await db.reachability_set(b.id, a.id, False)
    assert await db.reachability_get(a.id, b.id) == Reachability(a.id, b.id, True)
    assert await db.reachability_list(b.id) == [Reachability(b.id, a.id, False)]
    await db.site_remove(a.id)
    assert await db.site_get(a.id) is None
    assert await db.reachability_list(a.id) == []
    assert await db.reachability_list(b.id) == [Reachability(b.id, a.id, False)]


async def test_backend_add_get_find_and_list(db: GeoDB) -> None:
    east, west = await _site(db, "east"), await _site(db, "west")
    b1 = Backend(id=uuid.uuid4(), site_id=east.id, host="b1.example")
    b2 = Backend(id=uuid.uuid4(), site_id=west.id, host="b2.example", load_factor=50)
    assert await db.backend_add(b1) and await db.backend_add(b2)
    assert not await db.backend_add(Backend(id=b1.id, site_id=east.id, host="x"))
    got = await db.backend_get(east.id, b1.id)
    assert (got.host, got.status, got.load_factor) == ("b1.example", "standby", 100)
    assert got.status_changed_us is not None
    assert (await db.backend_find_by_host("B2.example")).id == b2.id
    assert await db.backend_find_by_host("nope") is None
    assert (await db.backend_find_by_id(b2.id)).site_id == west.id
    assert [b.id for b in await db.backend_list(east.id)] == [b1.id]
    assert {b.id for b in await db.backend_list_all()} == {b1.id, b2.id}


async def test_backend_status_change_resets_force_move_and_records_write_time(db: GeoDB) -> None:
    site = await _site(db)
    b = Backend(id=uuid.uuid4(), site_id=site.id, host="b1")
    await db.backend_add(b)
    fm = ForceMove(id=uuid.uuid4(), percentage=20, dest=("b2", "b3"))
    await db.backend_force_move_set(site.id, b.id, fm)
    assert (await db.backend_get(site.id, b.id)).force_move == fm
    ts = await db.backend_set_status(site.id, b.id, "online", reason="admin", timestamp=10**15 * 2)
    got = await db.backend_get(site.id, b.id)
    assert (got.status, got.status_reason, got.force_move) == ("online", "admin", None)
    assert got.status_changed_us == ts == 10**15 * 2
    await db.backend_update(site.id, b.id, load_factor=0, user_count_approx=12)
    got = await db.backend_get(site.id, b.id)
    assert (got.load_factor, got.user_count_approx, got.status) == (0, 12, "online")
    with pytest.raises(TypeError):
        await db.backend_update(site.id, b.id, status="offline")


async def test_backend_remove_drops_its_stats_only(db: GeoDB) -> None:
    site = await _site(db)
    b1 = Backend(id=uuid.uuid4(), site_id=site.id, host="b1")
    b2 = Backend(id=uuid.uuid4(), site_id=site.id, host="b2")
    await db.backend_add(b1)
    await db.backend_add(b2)
    await db.backend_stats_put(site.id, b1.id, [Stat("cpu", 0.5, "gauge"), Stat("logins", 7.0)])
    await db.backend_stats_put(site.id, b2.id, [Stat("cpu", 0.25, "gauge")])
    assert await db.backend_stats_get(site.id, b1.id) == [Stat("cpu", 0.5, "gauge"), Stat("logins", 7.0)]
    await db.backend_remove(site.id, b1.id)
    assert await db.backend_get(site.id, b1.id) is None
    assert await db.backend_stats_list(site.id) == {b2.id: [Stat("cpu", 0.25, "gauge")]}


async def test_proxy_dest_stats_by_partition_and_destination(db: GeoDB) -> None:
    site = uuid.uuid4()
    stats = [
        ProxyDestStat(site, "b1", "p1", "failures", 2.0),
        ProxyDestStat(site, "b1", "p2", "failures", 1.0),
        ProxyDestStat(site, "b2", "p1", "successes", 9.0),
    ]
    await db.proxy_dest_stats_put(stats)
    assert await db.proxy_dest_stats_list(site) == stats
    assert await db.proxy_dest_stats_list(site, "b2") == [stats[2]]
    await db.proxy_dest_stats_delete(site, "b1", "p2", "failures")
    assert await db.proxy_dest_stats_list(site, "b1") == [stats[0]]
    assert await db.proxy_dest_stats_list(uuid.uuid4()) == []


async def test_users_put_fields_clear_and_delete(db: GeoDB) -> None:
    site = uuid.uuid4()
    await db.user_put("alice", group_name="default-3", preferred_site_id=site)
    await db.user_put("bob", group_name="default-1")
    assert await db.user_get("alice") == User("alice", group_name="default-3", preferred_site_id=site)
    await db.user_put("alice", moving_group_name="vip", moving_preferred_site_id=site)
    alice = await db.user_get("alice")
    assert alice.moving and alice.group_name == "default-3"
    await db.user_put("alice", moving_group_name=None, moving_preferred_site_id=None)
    assert not (await db.user_get("alice")).moving
    assert [u.username for u in await db.user_list_all()] == ["alice", "bob"]
    with pytest.raises(TypeError):
        await db.user_put("alice", group="x")
    await db.user_site_put(UserSite("alice", site, uuid.uuid4(), preferred_site=True))
    assert len(await db.user_sites_list("alice")) == 1
    await db.user_delete("alice")
    assert await db.user_get("alice") is None
    assert await db.user_sites_list("alice") == []


async def test_user_pages_list_every_live_user_once_page_by_page(db: GeoDB) -> None:
    names = [f"u{i:02d}" for i in range(11)]
    for name in reversed(names):
        await db.user_put(name, group_name="g")
    await db.user_delete("u05")
    pages = [[u.username for u in page] async for page in db.user_pages(3)]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [n for p in pages for n in p] == [n for n in names if n != "u05"]
    assert [[u.username for u in p] async for p in db.user_pages(10)] == [[n for n in names if n != "u05"]]


async def test_paged_scans_need_a_table_keyed_by_one_column(db: GeoDB) -> None:
    with pytest.raises(GeoDBError, match="paged scans"):
        await db.engine.scan_page("user_groups", None, 10)


async def test_group_create_if_absent_first_writer_wins(db: GeoDB) -> None:
    site = uuid.uuid4()
    b1, b2 = uuid.uuid4(), uuid.uuid4()
    applied, stored = await db.group_create_if_absent(
        Group(site, "default-1", backend_id=b1, alt_backend_id=b2)
    )
    assert applied and stored.backend_id == b1
    applied, stored = await db.group_create_if_absent(Group(site, "default-1", backend_id=b2))
    assert not applied
    assert (stored.backend_id, stored.alt_backend_id) == (b1, b2)
    assert (await db.group_get(site, "default-1")).backend_id == b1


async def test_group_assign_backend_only_while_unassigned(db: GeoDB) -> None:
    site = uuid.uuid4()
    b1, b2 = uuid.uuid4(), uuid.uuid4()
    applied, _ = await db.group_create_if_absent(Group(site, "default-2"))
    assert applied
    assert (await db.group_get(site, "default-2")).backend_id is None
    applied, stored = await db.group_assign_backend(site, "default-2", b1, b2)
    assert applied and stored.backend_id == b1
    applied, stored = await db.group_assign_backend(site, "default-2", b2, b1)
    assert not applied and stored.backend_id == b1


async def test_group_update_list_and_delete(db: GeoDB) -> None:
    site = uuid.uuid4()
    for name in ("g-b", "g-a"):
        await db.group_create_if_absent(Group(site, name))
    await db.group_update(site, "g-a", sticky_users=True, moving="m1", alt_backend_id=NO_ID)
    got = await db.group_get(site, "g-a")
    assert (got.sticky_users, got.sticky_backend, got.moving, got.alt_backend_id) == (
        (True, False, "m1", NO_ID)
    )
    assert [g.name for g in await db.group_list(site)] == ["g-a", "g-b"]
    await db.group_update(site, "g-a", moving=None)
    assert (await db.group_get(site, "g-a")).moving is None
    await db.group_delete(site, "g-a")
    assert [g.name for g in await db.group_list(site)] == ["g-b"]


async def test_group_sites_roundtrip(db: GeoDB) -> None:
    site, failover = uuid.uuid4(), uuid.uuid4()
    await db.group_site_put(GroupSite("default-1", site, status=1, failover_site_id=failover))
    got = await db.group_site_get("default-1", site)
    assert (got.status, got.failover_site_id) == (1, failover)
    assert got.status_changed_us is not None
    assert len(await db.group_site_list("default-1")) == 1
    await db.group_site_delete("default-1", site)
    assert await db.group_site_get("default-1", site) is None


async def test_cluster_settings_by_section(db: GeoDB) -> None:
    site = uuid.uuid4()
    s1 = Setting("controller", "load_balancing", "dryrun", site_id=site)
    s2 = Setting("controller", "evacuation", "on")
    await db.setting_put(s1)
    await db.setting_put(s2)
    await db.setting_put(Setting("other", "x", "1"))
    assert await db.setting_get("controller", "load_balancing", site) == s1
    assert await db.setting_get("controller", "load_balancing") is None
    assert sorted(await db.setting_list("controller"), key=lambda s: s.name) == [s2, s1]
    await db.setting_delete("controller", "evacuation")
    assert await db.setting_list("controller") == [s1]
