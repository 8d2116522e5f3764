"""The proxy's router over a real SQLite GeoDB and a real LocalDB cache."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from palomar.cluster.director_hash import DirectorRing, MailHost
from palomar.cluster.director_transition import DirectorTransition
from palomar.cluster.model import Backend, Site
from palomar.geodb import open_engine
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.geodb.repository import GeoDB
from palomar.localdb.store import LocalDB
from palomar.proxy.router import Router


@dataclass
class World:
    geodb: GeoDB
    cache: LocalDB
    router: Router
    site: Site
    backends: list[Backend]


@pytest.fixture
async def world(tmp_path) -> AsyncIterator[World]:
    engine = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"))
    await engine.open()
    geodb = GeoDB(engine)
    site = Site(id=uuid.uuid4(), name="east")
    assert await geodb.site_add(site)
    backends = [Backend(id=uuid.uuid4(), site_id=site.id, host=f"10.0.0.{i}") for i in (1, 2)]
    for backend in backends:
        await geodb.backend_add(backend)
        await geodb.backend_set_status(site.id, backend.id, "online", None)
    cache = LocalDB(str(tmp_path / "localdb.sqlite"))
    yield World(geodb, cache, Router(geodb, cache, site_name="east", group_count=4, cache_ttl=60), site, backends)
    cache.close()
    await geodb.close()


async def test_cached_site_view_is_decoded_once(world: World) -> None:
    first = await world.router.site_view()
    assert first is not None and {b.host for b in first.backends} == {"10.0.0.1", "10.0.0.2"}
    assert await world.router.site_view() is first  # same text in the LocalDB: the same object


async def test_other_process_refresh_is_seen_at_once(world: World) -> None:
    """`geodb refresh` (another process clearing the LocalDB cache) wins over the decoded copy."""
    before = await world.router.site_view()
    assert before is not None and all(b.online for b in before.backends)
    await world.geodb.backend_set_status(world.site.id, world.backends[0].id, "offline", "test")
    assert await world.router.site_view() is before  # still cached: the GeoDB change is not seen yet
    other = LocalDB(world.cache.path)
    other.cache_clear()
    other.close()
    after = await world.router.site_view()
    assert after is not before and after is not None
    assert {b.host: b.status for b in after.backends} == {"10.0.0.1": "offline", "10.0.0.2": "online"}


async def test_routing_uses_the_memoised_group_and_follows_its_change(world: World) -> None:
    first = await world.router.route("alice@example.test")
    assert first.host in ("10.0.0.1", "10.0.0.2") and first.group is not None
    assert (await world.router.route("alice@example.test")).host == first.host
    other = next(b for b in world.backends if b.host != first.host)
    applied, _ = await world.geodb.group_replace_backend(
        world.site.id, first.group, other.id, None,
        expect_backend_id=next(b.id for b in world.backends if b.host == first.host))
    assert applied
    world.router.invalidate(f"group/{world.site.id}/{first.group}")
    assert (await world.router.route("alice@example.test")).host == other.host


class FailingEngine:
    """Wraps a real engine; every call fails while `down` is set (the GeoDB is unreachable)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args, **kwargs):
            if self.down:
                raise GeoDBUnavailable("GeoDB read: connection refused")
            return await attr(*args, **kwargs)
        return call


async def test_geodb_outage_routes_known_users_from_the_stale_cache(tmp_path) -> None:
    engine = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"))
    await engine.open()
    failing = FailingEngine(engine)
    geodb = GeoDB(failing)
    site = Site(id=uuid.uuid4(), name="east")
    assert await geodb.site_add(site)
    backend = Backend(id=uuid.uuid4(), site_id=site.id, host="10.0.0.1")
    await geodb.backend_add(backend)
    await geodb.backend_set_status(site.id, backend.id, "online", None)
    cache = LocalDB(str(tmp_path / "localdb.sqlite"), stale_keep_secs=3600)
    clock = [time.time()]
    router = Router(geodb, cache, site_name="east", group_count=4, cache_ttl=1, max_stale=3600,
                    clock=lambda: clock[0])
    known = await router.route("known@example.test")  # its first login: placed and cached
    assert known.host == "10.0.0.1"
    failing.down = True
    clock[0] += 600  # ten minutes later: the normal cache lifetime is long over
    again = await router.route("known@example.test")
    assert again.host == "10.0.0.1" and router.stale_reads > 0
    clock[0] += 3600  # past cluster_geodb_stale_max: no longer used
    with pytest.raises(GeoDBUnavailable):
        await router.route("known@example.test")
    clock[0] -= 3600
    with pytest.raises(GeoDBUnavailable):  # nothing cached: the caller answers a temporary failure
        await router.route("new@example.test")
    strict = Router(geodb, cache, site_name="east", group_count=4, cache_ttl=1, max_stale=0,
                    clock=lambda: clock[0])
    with pytest.raises(GeoDBUnavailable):  # stale use switched off
        await strict.route("known@example.test")
    cache.close()
    await engine.close()


async def test_director_transition_places_new_users_on_the_directors_backend(world: World) -> None:
    """Each new user's group is written on the backend the director ring gives it."""
    ring = DirectorRing((MailHost("192.0.2.1"), MailHost("192.0.2.2")))
    transition = DirectorTransition(ring, {"192.0.2.1": "10.0.0.1", "192.0.2.2": "10.0.0.2"})
    router = Router(world.geodb, world.cache, site_name="east", group_count=4, cache_ttl=60, director=transition)
    names = [f"user{i}@example.test" for i in range(12)]
    for name in names:
        routed = await router.route(name)
        assert routed.host == transition.backend_for(name)
        assert routed.group is not None and routed.group.startswith(f"director-{routed.host}-")
        user = await world.geodb.user_get(name)
        assert user is not None and user.group_name == routed.group
        group = await world.geodb.group_get(world.site.id, routed.group)
        assert group is not None and group.backend_id == next(b.id for b in world.backends if b.host == routed.host)
    assert {transition.backend_for(n) for n in names} == {"10.0.0.1", "10.0.0.2"}


async def test_new_user_is_homed_here_and_its_site_backend_recorded_once(world: World) -> None:
    first = await world.router.route("carol")
    assert first.host in {"10.0.0.1", "10.0.0.2"}
    user = await world.geodb.user_get("carol")
    assert user is not None and user.preferred_site_id == world.site.id
    [entry] = await world.geodb.user_sites_list("carol")
    assert (entry.site_id, entry.preferred_site) == (world.site.id, True)
    assert entry.backend_id == next(b.id for b in world.backends if b.host == first.host)
    await world.geodb.user_site_delete("carol", world.site.id)
    await world.router.route("carol")
    assert await world.geodb.user_sites_list("carol") == []  # unchanged: not written again


async def test_a_user_of_another_site_is_sent_to_that_site(world: World) -> None:
    west = Site(id=uuid.uuid4(), name="west", load_balancer="127.0.0.101")
    assert await world.geodb.site_add(west)
    await world.geodb.user_put("dave", group_name="default-1", preferred_site_id=west.id)
    result = await world.router.route("dave")
    assert result.host is None and result.site is not None and result.site.name == "west"
    assert await world.geodb.group_get(world.site.id, "default-1") is None  # nothing placed here


async def test_a_group_with_refresh_after_is_read_again_sooner_than_cache_ttl(world: World) -> None:
    """`user_groups.refresh_after` (seconds): a proxy keeps its cached copy of that group no longer.
    The router's cache_ttl here is 60 s and its clock is held still: only the group's own
    refresh_after can make the change below visible."""
    now = [1_000_000.0]
    world.router.clock = lambda: now[0]
    first = await world.router.route("alice@example.test")
    assert first.group is not None and first.host is not None
    other = next(b for b in world.backends if b.host != first.host)
    await world.geodb.group_update(world.site.id, first.group, refresh_after=2)
    world.router.invalidate(f"group/{world.site.id}/{first.group}")  # read the row with its refresh_after
    assert (await world.router.route("alice@example.test")).host == first.host
    await world.geodb.group_update(world.site.id, first.group, backend_id=other.id)
    now[0] += 1
    assert (await world.router.route("alice@example.test")).host == first.host  # cached, 1 s old
    now[0] += 1
    assert (await world.router.route("alice@example.test")).host == other.host  # 2 s: read again
