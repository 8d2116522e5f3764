"""The proxy's router over a real SQLite GeoDB and a real LocalDB cache."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from palomar.cluster.model import Backend, Site
from palomar.geodb import open_engine
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
