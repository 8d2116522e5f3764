"""The backend's ownership check on every login: fresh ownership data, in two engine calls; the
sites table and the reachability rows at most once a second."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from backend_states import backend_state
from palomar.backend import service
from palomar.backend.service import SITES_TTL, BackendState
from palomar.cluster.model import Group
from palomar.cluster.ownership import Own, Refer
from palomar.geodb.engine import Scan
from palomar.geodb.guarded import GeoDBUnavailable
from palomar.geodb.sqlite_engine import SQLiteGeoEngine
from palomar.localdb.store import LocalDB


class CountingEngine(SQLiteGeoEngine):
    """The real SQLite engine, counting its jobs (inline reads and hand-offs to its worker thread)
    and the full scans."""

    jobs = 0
    scans = 0
    down = False
    """Fail every call as an unreachable GeoDB does."""

    async def _run(self, fn: Any, *args: Any, **options: Any) -> Any:
        if self.down:
            raise GeoDBUnavailable("GeoDB not reachable (test)")
        self.jobs += 1
        return await super()._run(fn, *args, **options)

    async def _read(self, job: Any) -> Any:
        if self.down:
            raise GeoDBUnavailable("GeoDB not reachable (test)")
        if self._reader is None or self._writes_queued:
            return await super()._read(job)  # counted by _run
        self.jobs += 1
        return await super()._read(job)

    async def read_many(self, reads: Any) -> list[Any]:
        self.scans += sum(1 for r in reads if isinstance(r, Scan))
        return await super().read_many(reads)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def state(tmp_path) -> AsyncIterator[BackendState]:
    backend = await backend_state(tmp_path, CountingEngine(str(tmp_path / "geodb.sqlite")), clock=Clock())
    yield backend
    backend.localdb.close()
    await backend.geodb.close()


async def test_owned_user_is_decided_in_two_engine_calls(state: BackendState) -> None:
    assert state.site_id is not None and state.backend_id is not None
    await state.geodb.group_create_if_absent(Group(state.site_id, "g1", backend_id=state.backend_id))
    await state.geodb.user_put("alice@example.test", group_name="g1")
    engine = state.geodb.engine
    assert isinstance(engine, CountingEngine)
    before = engine.jobs
    decision, group, record = await state.ownership_and_user("alice@example.test")
    assert engine.jobs - before == 2
    assert isinstance(decision, Own) and group is not None and group.name == "g1"
    assert record is not None and record.group_name == "g1"


async def test_fresh_data_every_time(state: BackendState) -> None:
    """Ownership data is never cached: a group moved to another backend is refused on the very next login."""
    assert state.site_id is not None and state.backend_id is not None
    other = next(b for b in await state.geodb.backend_list(state.site_id) if b.id != state.backend_id)
    await state.geodb.group_create_if_absent(Group(state.site_id, "g2", backend_id=state.backend_id))
    await state.geodb.user_put("bob@example.test", group_name="g2")
    assert isinstance((await state.ownership("bob@example.test"))[0], Own)
    applied, _ = await state.geodb.group_replace_backend(state.site_id, "g2", other.id, None,
                                                         expect_backend_id=state.backend_id)
    assert applied
    decision, _ = await state.ownership("bob@example.test")
    assert isinstance(decision, Refer) and decision.host == "10.0.0.9"


async def test_unknown_user_is_not_served(state: BackendState) -> None:
    decision, group, record = await state.ownership_and_user("nobody@example.test")
    assert not isinstance(decision, Own) and group is None and record is None


async def test_the_sites_table_is_read_once_a_second_and_ownership_stays_fresh(state: BackendState) -> None:
    """The sites scan (a range query on Cassandra) is not repeated for every login; a site change
    reaches the ownership check within SITES_TTL; a group's new backend on the very next login."""
    assert state.site_id is not None and state.backend_id is not None
    await state.geodb.group_create_if_absent(Group(state.site_id, "g3", backend_id=state.backend_id))
    await state.geodb.user_put("carol@example.test", group_name="g3")
    engine, clock = state.geodb.engine, state.clock
    assert isinstance(engine, CountingEngine) and isinstance(clock, Clock)
    before = engine.scans
    for _ in range(3):
        assert isinstance((await state.ownership("carol@example.test"))[0], Own)
    assert engine.scans - before == 1
    clock.now += SITES_TTL
    await state.ownership("carol@example.test")
    assert engine.scans - before == 2
    other = next(b for b in await state.geodb.backend_list(state.site_id) if b.id != state.backend_id)
    await state.geodb.group_replace_backend(state.site_id, "g3", other.id, None, expect_backend_id=state.backend_id)
    assert isinstance((await state.ownership("carol@example.test"))[0], Refer)  # within the second: fresh


class WallClock:
    """Stands in for the `time` module of backend/service.py: the stale rule's wall time."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


async def test_a_quiet_site_still_serves_from_the_last_read_in_an_outage(tmp_path, monkeypatch) -> None:
    """The site view and the sites rows do not change for longer than `cluster_geodb_stale_max`
    while users keep logging in; an outage then still serves a user read a moment before it."""
    wall = WallClock(1_000_000.0)
    monkeypatch.setattr(service, "time", wall)
    engine = CountingEngine(str(tmp_path / "geodb.sqlite"))
    state = await backend_state(tmp_path, engine, stale_max=100.0, trusted_since=wall.now)
    state.localdb.close()
    state.localdb = LocalDB(str(tmp_path / "stale-localdb.sqlite"), stale_keep_secs=100)  # as service_runtime
    try:
        assert state.site_id is not None and state.backend_id is not None
        await state.geodb.backend_set_status(state.site_id, state.backend_id, "online")
        await state.geodb.group_create_if_absent(Group(state.site_id, "g1", backend_id=state.backend_id))
        await state.geodb.user_put("alice@example.test", group_name="g1")
        for _ in range(16):  # 150 s of logins, the site unchanged
            assert isinstance((await state.ownership("alice@example.test"))[0], Own)
            wall.now += 10
        engine.down = True
        decision, group = await state.ownership("alice@example.test")
        assert isinstance(decision, Own) and "cached" in decision.reason and group is not None
        wall.now += 101  # the last read is now older than the bound
        with pytest.raises(GeoDBUnavailable):
            await state.ownership("alice@example.test")
    finally:
        state.localdb.close()
        await state.geodb.close()
