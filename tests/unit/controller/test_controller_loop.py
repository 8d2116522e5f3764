"""The controller's decision function (pure) and one tick of its loop on a real SQLite GeoDB."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from palomar.cluster.model import NO_ID, Backend, ProxyDestStat, Setting, Site
from palomar.controller.decide import ControllerRules, Snapshot, decide, plan
from palomar.controller.events import event_line
from palomar.controller.metrics import ControllerMetrics
from palomar.controller.service import Controller
from palomar.controller.snapshot import read_snapshot
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from palomar.metrics.registry import Registry

SITE = Site(UUID(int=1), "east")
NOW = 10_000.0


def _backend(n: int, status: str, reason: str | None) -> Backend:
    return Backend(UUID(int=100 + n), SITE.id, f"b{n}.test", status=status, status_reason=reason,
                   status_changed_us=int((NOW - 120) * 1_000_000))


def _good_probes(host: str, at: float = NOW - 40) -> tuple[ProxyDestStat, ...]:
    return (ProxyDestStat(SITE.id, host, "p1", "probe_last_success", at, "gauge"),
            ProxyDestStat(SITE.id, host, "p1", "probe_consecutive_success", 5, "gauge"))


def _snapshot(state: str | None, *, table_present: bool = True) -> Snapshot:
    settings = () if state is None else (Setting("controller", "health", state, SITE.id, NO_ID),)
    backends = (_backend(1, "offline", "proxy p1: connect failed"), _backend(2, "offline", "admin"),
                _backend(3, "online", "admin"))
    stats = _good_probes("b1.test") + _good_probes("b2.test")
    return Snapshot(SITE, backends, stats, settings, table_present, NOW)


@pytest.mark.parametrize(
    ("state", "present", "expected"),
    [("on", True, [("b1.test", "on", True)]), ("dryrun", True, [("b1.test", "dryrun", False)]),
     ("off", True, []), (None, True, []), (None, False, [("b1.test", "on", True)])],
)
def test_decide_follows_the_feature_state(state: str | None, present: bool, expected: list) -> None:
    actions = decide(_snapshot(state, table_present=present), ControllerRules())
    assert [(a.backend.host, a.state, a.execute) for a in actions] == expected
    for action in actions:
        assert (action.feature, action.status, action.kind) == ("health", "online", "set_online")
        assert action.reason.startswith("controller: probes succeeded")


def test_plan_says_why_a_backend_is_held() -> None:
    _, held = plan(_snapshot("on"), ControllerRules())
    assert [(h.host, h.feature) for h in held] == [("b2.test", "health")]
    assert "administrator" in held[0].reason


def test_event_line_quotes_values_with_spaces() -> None:
    assert event_line("x", a="plain", b="two words", c=None, d='say "hi"') == (
        'event=x a=plain b="two words" c=- d="say \\"hi\\""'
    )


# --- the loop's tick on a real GeoDB ------------------------------------------------------------------


async def _open(path: Path) -> GeoDB:
    engine = open_engine("sqlite", path=str(path))
    await engine.open()
    return GeoDB(engine)


@pytest.fixture
async def seeded(tmp_path: Path):
    """A site east with b1 (offline by a proxy), b2 (offline by admin), b3 (online); good probes."""
    path = tmp_path / "geodb.sqlite"
    db = await _open(path)
    site = Site(uuid4(), "east")
    await db.site_add(site)
    ids = {}
    for host in ("b1.test", "b2.test", "b3.test"):
        ids[host] = uuid4()
        await db.backend_add(Backend(ids[host], site.id, host))
    await db.backend_set_status(site.id, ids["b1.test"], "offline", "proxy p1: 3 destination failures")
    await db.backend_set_status(site.id, ids["b2.test"], "offline", "admin")
    await db.backend_set_status(site.id, ids["b3.test"], "online", "admin")
    now = time.time()
    for host in ("b1.test", "b2.test"):
        await db.proxy_dest_stats_put([
            ProxyDestStat(site.id, host, "p1", "probe_last_success", now + 1, "gauge"),
            ProxyDestStat(site.id, host, "p1", "probe_consecutive_success", 4, "gauge"),
        ])
    yield path, db, site, ids
    await db.close()


def _controller(path: Path, clock_offset: float = 60) -> tuple[Controller, Registry]:
    registry = Registry()
    controller = Controller(lambda: _open(path), "east", ControllerRules(), ControllerMetrics(registry),
                            clock=lambda: time.time() + clock_offset)
    return controller, registry


async def test_tick_sets_the_proxy_marked_backend_online_only(seeded, caplog) -> None:
    path, db, site, ids = seeded
    await db.setting_put(Setting("controller", "health", "on", site.id))
    controller, registry = _controller(path)
    caplog.set_level(logging.INFO, "palomar.controller")
    try:
        assert await controller.tick()
        b1 = await db.backend_get(site.id, ids["b1.test"])
        b2 = await db.backend_get(site.id, ids["b2.test"])
        assert (b1.status, b2.status, b2.status_reason) == ("online", "offline", "admin")
        assert b1.status_reason.startswith("controller: probes succeeded on 1 proxy")
        events = [r.getMessage() for r in caplog.records if "cluster_backend_status_changed" in r.getMessage()]
        assert len(events) == 1
        assert events[0].startswith("event=cluster_backend_status_changed backend=b1.test ")
        assert "status=online previous=offline" in events[0] and 'reason="controller: probes' in events[0]
        text = registry.exposition()
        assert 'palomar_controller_decisions_total{feature="health",state="on",action="set_online"} 1' in text
        assert await controller.tick()
        text = registry.exposition()
        assert 'palomar_controller_backends{site="east",status="online"} 2' in text
        assert 'palomar_controller_backends{site="east",status="offline"} 1' in text
        assert 'palomar_controller_feature_state{site="east",feature="health",state="on"} 1' in text
        assert 'palomar_controller_ticks_total{result="ok"} 2' in text
    finally:
        await controller.close()


async def test_dryrun_logs_once_and_writes_nothing(seeded, caplog) -> None:
    path, db, site, ids = seeded
    await db.setting_put(Setting("controller", "health", "dryrun", site.id))
    before = await db.backend_get(site.id, ids["b1.test"])
    controller, registry = _controller(path)
    caplog.set_level(logging.INFO, "palomar.controller")
    try:
        assert await controller.tick()
        assert await controller.tick()
    finally:
        await controller.close()
    assert await db.backend_get(site.id, ids["b1.test"]) == before
    lines = [r.getMessage() for r in caplog.records if "controller_dryrun" in r.getMessage()]
    assert len(lines) == 1
    assert 'backend=b1.test would="set status online"' in lines[0]
    assert registry.counter("controller_decisions", "").value(
        feature="health", state="dryrun", action="set_online") == 1


async def test_admin_write_between_snapshot_and_action_wins(seeded) -> None:
    path, db, site, ids = seeded
    await db.setting_put(Setting("controller", "health", "on", site.id))
    controller, _ = _controller(path)
    controller.db = await _open(path)
    try:
        snapshot = await read_snapshot(controller.db, "east", time.time() + 60)
        actions = decide(snapshot, ControllerRules())
        assert [a.backend.host for a in actions] == ["b1.test"]
        await db.backend_set_status(site.id, ids["b1.test"], "offline", "admin")
        await controller._handle(actions[0], snapshot)
    finally:
        await controller.close()
    b1 = await db.backend_get(site.id, ids["b1.test"])
    assert (b1.status, b1.status_reason) == ("offline", "admin")


async def test_geodb_error_is_logged_and_the_next_tick_reconnects(seeded, caplog) -> None:
    path, db, site, ids = seeded
    await db.setting_put(Setting("controller", "health", "off", site.id))
    controller, registry = _controller(path)
    caplog.set_level(logging.INFO, "palomar.controller")
    try:
        assert await controller.tick()
        await controller.db.engine.close()  # the connection breaks under the controller
        assert not await controller.tick()
        assert controller.db is None
        errors = [r.getMessage() for r in caplog.records if "controller_geodb_error" in r.getMessage()]
        assert len(errors) == 1 and "not open" in errors[0]
        await db.setting_put(Setting("controller", "health", "on", site.id))
        assert await controller.tick()
        assert any("controller_recovered" in r.getMessage() for r in caplog.records)
        assert (await db.backend_get(site.id, ids["b1.test"])).status == "online"
        counter = registry.counter("controller_ticks", "")
        assert (counter.value(result="ok"), counter.value(result="error")) == (2, 1)
    finally:
        await controller.close()


async def test_missing_site_is_reported_once(tmp_path: Path, caplog) -> None:
    controller, registry = _controller(tmp_path / "empty.sqlite")
    caplog.set_level(logging.INFO, "palomar.controller")
    try:
        assert not await controller.tick()
        assert not await controller.tick()
    finally:
        await controller.close()
    missing = [r.getMessage() for r in caplog.records if "controller_site_missing" in r.getMessage()]
    assert missing == ["event=controller_site_missing site=east"]
    assert registry.counter("controller_ticks", "").value(result="no-site") == 2


async def test_no_settings_at_all_means_health_on(seeded) -> None:
    path, db, site, ids = seeded
    controller, _ = _controller(path)
    try:
        assert await controller.tick()
    finally:
        await controller.close()
    assert (await db.backend_get(site.id, ids["b1.test"])).status == "online"
    await db.setting_put(Setting("other", "x", "y"))
    changed = await db.backend_set_status(site.id, ids["b1.test"], "offline", "proxy p1: again")
    await db.proxy_dest_stats_put([
        ProxyDestStat(site.id, "b1.test", "p1", "probe_last_success", changed / 1e6 + 1, "gauge")])
    controller, _ = _controller(path)
    try:
        assert await controller.tick()
    finally:
        await controller.close()
    assert (await db.backend_get(site.id, ids["b1.test"])).status == "offline"
