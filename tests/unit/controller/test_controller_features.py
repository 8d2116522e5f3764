"""Each moving feature of the controller in on, dryrun and off, one tick at a time on a real SQLite GeoDB.

`on` requests the move through the same GeoDB writes as `palomar cluster group move` / `user move` /
`site force-move` and logs it; `dryrun` writes nothing and logs the exact decision once; `off` does
neither.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import astuple, replace
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from inprocess_cluster import FlakyEngine
from palomar.backend.load_sample import SAMPLED_AT
from palomar.cluster.balance import BalanceSettings
from palomar.cluster.failback import FailbackSettings
from palomar.cluster.model import Backend, Group, Reachability, Setting, Site, Stat
from palomar.controller.decide import ControllerRules, plan
from palomar.controller.history import History
from palomar.controller.metrics import ControllerMetrics
from palomar.controller.service import Controller, decode_regroup_plan, encode_regroup_plan
from palomar.controller.snapshot import read_snapshot
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.metrics.registry import Registry

RULES = ControllerRules(
    balance=BalanceSettings(resources=("load_cpu_pct",), window=2, min_samples=2, min_residence=0),
    failback=FailbackSettings(groups_per_hour=60, min_residence=0),
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time() + 10  # after the rows the test writes next

    def __call__(self) -> float:
        return self.now


async def _open(path: Path) -> GeoDB:
    engine = open_engine("sqlite", path=str(path))
    await engine.open()
    return GeoDB(engine)


class World:
    """Site east with backends b1..b3 (online), a clock, a controller with an in-memory history."""

    def __init__(self, path: Path, db: GeoDB) -> None:
        self.path, self.db = path, db
        self.site = Site(uuid4(), "east")
        self.ids: dict[str, UUID] = {}
        self.clock = Clock()
        self.controller = Controller(lambda: _open(path), "east", RULES, ControllerMetrics(Registry()),
                                     clock=self.clock, history=History(None, 10))

    async def setup(self) -> None:
        await self.db.site_add(self.site)
        for n in (1, 2, 3):
            self.ids[f"b{n}"] = uuid4()
            await self.db.backend_add(Backend(self.ids[f"b{n}"], self.site.id, f"b{n}"))
            await self.db.backend_set_status(self.site.id, self.ids[f"b{n}"], "online", "admin")

    async def groups(self, host: str, count: int, prefix: str) -> None:
        for i in range(count):
            await self.db.group_create_if_absent(Group(self.site.id, f"{prefix}{i}", backend_id=self.ids[host]))

    async def placement(self) -> dict[str, tuple]:
        return {g.name: (g.backend_id, g.alt_backend_id, bool(g.moving)) for g in await self.db.group_list(self.site.id)}


@pytest.fixture
async def world(tmp_path: Path):
    db = await _open(tmp_path / "geodb.sqlite")
    w = World(tmp_path / "geodb.sqlite", db)
    await w.setup()
    yield w
    await w.controller.close()
    await db.close()


async def _evacuate(w: World) -> None:
    await w.groups("b1", 2, "dead")
    await w.groups("b2", 1, "two")
    await w.db.backend_set_status(w.site.id, w.ids["b1"], "offline", "proxy p1: connect failed")
    w.clock.now += 601  # controller_evacuate_after = 10 minutes


async def _failback(w: World) -> None:
    await w.groups("b1", 3, "one")
    await w.groups("b2", 3, "two")  # b3 was just set online and holds nothing: its share is 2


async def _balance(w: World) -> None:
    await w.groups("b1", 2, "one")
    await w.groups("b2", 2, "two")
    await w.groups("b3", 2, "three")
    for tick, at in enumerate((w.clock.now - 60, w.clock.now - 30)):
        for host, cpu in (("b1", 95.0), ("b2", 50.0), ("b3", 5.0)):
            await w.db.backend_stats_put(w.site.id, w.ids[host], [Stat(SAMPLED_AT, at + tick, "gauge"),
                                                                 Stat("load_cpu_pct", cpu, "gauge")])
        if tick == 0:
            assert await w.controller.tick()  # the first sample; balance waits for two


async def _group_size(w: World) -> None:
    await w.groups("b1", 2, "g")
    for i in range(10):
        await w.db.user_put(f"u{i:02d}@x", group_name="g0", preferred_site_id=w.site.id)


async def _site_failover(w: World) -> None:
    west = Site(uuid4(), "west")
    await w.db.site_add(west)
    await w.db.reachability_set(w.site.id, west.id, False)
    assert await w.controller.tick()  # "unreachable since" starts now
    w.clock.now += 301


async def _changes(w: World) -> dict:
    users = {u.username: u.moving_group_name for u in await w.db.user_list_all()}
    sites = {s.name: (s.force_move.percentage if s.force_move else None) for s in await w.db.site_list()}
    return {"groups": await w.placement(), "users": users, "sites": sites}


SCENARIOS = {
    "evacuate": (_evacuate, "controller_group_move", "group=dead0 from=b1 to=b3", "offline for 6"),
    "failback": (_failback, "controller_group_move", "to=b3", "share 2.0"),
    "balance": (_balance, "controller_group_move", "from=b1 to=b3", "score b1"),
    "group-size": (_group_size, "controller_user_move", "to=g1", "group g0 has 10 users"),
    "site-failover": (_site_failover, "controller_site_ramp", "target_site=west", "west unreachable for 301s"),
}


@pytest.mark.parametrize("feature", list(SCENARIOS))
@pytest.mark.parametrize("state", ["on", "dryrun", "off"])
async def test_feature_states(world: World, feature: str, state: str, caplog) -> None:
    setup, event, fields, reason = SCENARIOS[feature]
    await world.db.setting_put(Setting("controller", feature, state, world.site.id))
    await world.db.setting_put(Setting("controller", "health", "off", world.site.id))
    await setup(world)
    before = await _changes(world)
    caplog.set_level(logging.INFO, "palomar.controller")
    caplog.clear()
    assert await world.controller.tick()
    if await world.controller.regroup_plan_made():  # group-size: the day's scan ran beside the tick
        assert await world.controller.tick()  # stores the plan and starts on it
    first_tick = len(caplog.records)
    world.clock.now += 1
    assert await world.controller.tick()
    after = await _changes(world)
    messages = [r.getMessage() for r in caplog.records]
    repeated = [m for m in messages[first_tick:] if m.startswith("event=controller_dryrun ")]
    done = [m for m in messages if m.startswith(f"event={event} ")]
    dry = [m for m in messages if m.startswith("event=controller_dryrun ")]
    if state == "on":
        assert after != before
        assert done and all(f"feature={feature}" in m for m in done)
        assert fields in done[0] and reason in done[0], done[0]
        assert not dry
    elif state == "dryrun":
        assert after == before
        assert not done
        assert [m for m in dry if fields in m] and not repeated, dry  # logged once, not every tick
        assert f"feature={feature}" in dry[0] and reason in dry[0]
    else:
        assert after == before and not done and not dry


async def test_evacuated_groups_are_moving_to_the_emptiest_target_and_rate_limited(world: World) -> None:
    await world.db.setting_put(Setting("controller", "evacuate", "on", world.site.id))
    world.controller.rules = replace(RULES, evacuate=replace(RULES.evacuate, groups_per_hour=60))
    await _evacuate(world)
    assert await world.controller.tick()
    moved = {k: v for k, v in (await world.placement()).items() if v[2]}
    assert moved == {"dead0": (world.ids["b1"], world.ids["b3"], True)}  # b3 had no group, b2 one
    world.clock.now += 30
    assert await world.controller.tick()
    assert len([v for v in (await world.placement()).values() if v[2]]) == 1  # one a minute
    world.clock.now += 31
    assert await world.controller.tick()
    assert (await world.placement())["dead1"] == (world.ids["b1"], world.ids["b2"], True)


async def test_a_group_changed_since_the_snapshot_is_left_alone(world: World, caplog) -> None:
    await world.db.setting_put(Setting("controller", "failback", "on", world.site.id))
    await _failback(world)
    controller = world.controller
    controller.db = await _open(world.path)
    snapshot = await read_snapshot(controller.db, "east", world.clock())
    actions, _ = plan(snapshot, RULES)
    assert [a.kind for a in actions] == ["move_group"]
    await world.db.group_update(world.site.id, actions[0].move.group, sticky_backend=True, backend_id=world.ids["b2"])
    caplog.set_level(logging.INFO, "palomar.controller")
    await controller._handle(actions[0], snapshot)
    assert not (await world.db.group_get(world.site.id, actions[0].move.group)).moving
    assert any("group changed since the snapshot" in r.getMessage() for r in caplog.records)


async def test_site_failover_recovers_when_the_site_is_back(world: World) -> None:
    await world.db.setting_put(Setting("controller", "site-failover", "on", world.site.id))
    await _site_failover(world)
    assert await world.controller.tick()
    west = await world.db.site_get_by_name("west")
    assert west.force_move is not None and west.force_move.dest == (str(world.site.id),) and west.force_move.percentage == 10
    world.clock.now += 60
    assert await world.controller.tick()
    assert (await world.db.site_get_by_name("west")).force_move.percentage == 20
    await world.db.reachability_set(world.site.id, west.id, True)
    assert await world.controller.tick()
    world.clock.now += 300
    assert await world.controller.tick()
    west = await world.db.site_get_by_name("west")
    assert west.recover_percentage == 10 and west.force_move.percentage == 20
    assert [r for r in await world.db.reachability_list(world.site.id)] == [
        Reachability(world.site.id, west.id, True)]


async def test_evacuate_replaces_a_move_whose_destination_died(world: World) -> None:
    await world.db.setting_put(Setting("controller", "evacuate", "on", world.site.id))
    await world.groups("b2", 1, "stuck")
    await world.db.group_start_move(world.site.id, "stuck0", world.ids["b1"])
    await world.db.backend_set_status(world.site.id, world.ids["b1"], "offline", "proxy p1: connect failed")
    world.clock.now += 601
    assert await world.controller.tick()
    assert (await world.placement())["stuck0"] == (world.ids["b2"], world.ids["b3"], True)


class NoWholeUserScan(FlakyEngine):
    """A real engine that refuses to hand over the whole users table in one read."""

    async def scan(self, table):
        assert table != "users", "the users table was read in one piece"
        return await super().scan(table)


async def test_group_size_plan_reads_the_users_page_by_page(world: World, caplog) -> None:
    """The daily plan must not decode the whole user table on the event loop in one go (a
    million users is seconds): it reads pages, and the plan is the one of a single read."""
    await world.db.setting_put(Setting("controller", "group-size", "on", world.site.id))
    await world.db.setting_put(Setting("controller", "health", "off", world.site.id))
    await _group_size(world)
    await world.db.user_put("other@x", group_name="g0", preferred_site_id=uuid4())  # prefers another site

    async def open_paged() -> GeoDB:
        engine = NoWholeUserScan(open_engine("sqlite", path=str(world.path)))
        await engine.open()
        return GeoDB(engine)

    world.controller._open_db = open_paged
    world.controller.regroup_page_size = 3
    caplog.set_level(logging.INFO, "palomar.controller")
    assert await world.controller.tick()
    assert await world.controller.regroup_plan_made()
    assert await world.controller.tick()
    plans = [r.getMessage() for r in caplog.records if "controller_group_size_plan" in r.getMessage()]
    assert len(plans) == 1 and "users=5" in plans[0], plans
    moved = sorted(u.username for u in await world.db.user_list_all() if u.moving)
    assert moved == ["u05@x", "u06@x", "u07@x", "u08@x", "u09@x"]  # from the end of g0's sorted members


def test_the_stored_plan_decodes_to_the_planned_moves_in_the_format_of_one_json_list() -> None:
    """The plan is encoded move by move (no long GIL hold) but stored as before: one JSON list, so a
    plan written by an earlier controller still reads back."""
    site = uuid4()
    backend = uuid4()
    groups = (Group(site, "g0", backend_id=backend), Group(site, "g1", backend_id=backend))
    members = {"g0": [f'u{i}"quoted"@x' for i in range(6)], "g1": []}
    moves, text = encode_regroup_plan(groups, members, RULES.group_size)
    assert len(moves) == 3 and decode_regroup_plan(text) == moves
    assert text == json.dumps([list(astuple(m)) for m in moves])


class StalledUserScan(FlakyEngine):
    """A real engine whose pages of users arrive only when the test lets them (a million users)."""

    released: asyncio.Event

    async def scan_page(self, table, after, limit):
        if table == "users":
            await self.released.wait()
        return await super().scan_page(table, after, limit)


async def test_the_day_s_user_scan_does_not_hold_the_ticks(world: World, caplog) -> None:
    """At a million users the scan takes seconds: health and the other features keep their interval
    meanwhile, and the plan is stored by the first tick after the scan."""
    await world.db.setting_put(Setting("controller", "group-size", "on", world.site.id))
    await _group_size(world)
    released = asyncio.Event()

    async def open_stalled() -> GeoDB:
        engine = StalledUserScan(open_engine("sqlite", path=str(world.path)))
        engine.released = released
        await engine.open()
        return GeoDB(engine)

    world.controller._open_db = open_stalled
    caplog.set_level(logging.INFO, "palomar.controller")
    for _ in range(3):  # each tick ends while the scan waits (a tick held by it would never end)
        assert await asyncio.wait_for(world.controller.tick(), 60)
        world.clock.now += 1
    assert not [u for u in await world.db.user_list_all() if u.moving]
    released.set()
    assert await world.controller.regroup_plan_made()
    assert await world.controller.tick()
    assert [r for r in caplog.records if "controller_group_size_plan" in r.getMessage()]
    assert len([u for u in await world.db.user_list_all() if u.moving]) == 5
