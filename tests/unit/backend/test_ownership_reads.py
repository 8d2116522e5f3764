"""The backend's ownership check on every login: fresh ownership data, in one job of the SQLite
engine's worker thread; the sites table and the reachability rows at most once a second."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from backend_states import Clock, backend_state
from palomar.backend.service import SITES_TTL, BackendState
from palomar.cluster.model import Group
from palomar.cluster.ownership import Own, Refer
from palomar.geodb.engine import Scan
from palomar.geodb.sqlite_engine import SQLiteGeoEngine


class CountingEngine(SQLiteGeoEngine):
    """The real SQLite engine, counting the jobs it hands to its worker thread and the full scans."""

    jobs = 0
    scans = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        self.jobs += 1
        return await super()._run(fn, *args)

    def _read_jobs(self, reads: Any) -> list[Any]:
        self.scans += sum(1 for r in reads if isinstance(r, Scan))
        return super()._read_jobs(reads)


@pytest.fixture
async def state(tmp_path) -> AsyncIterator[BackendState]:
    backend = await backend_state(tmp_path, CountingEngine(str(tmp_path / "geodb.sqlite")), clock=Clock())
    yield backend
    backend.localdb.close()
    await backend.geodb.close()


async def test_owned_user_is_decided_in_one_worker_job(state: BackendState) -> None:
    assert state.site_id is not None and state.backend_id is not None
    await state.geodb.group_create_if_absent(Group(state.site_id, "g1", backend_id=state.backend_id))
    await state.geodb.user_put("alice@example.test", group_name="g1")
    engine = state.geodb.engine
    assert isinstance(engine, CountingEngine)
    before = engine.jobs
    decision, group, record = await state.ownership_and_user("alice@example.test")
    assert engine.jobs - before == 1  # the users, then their groups: one thread hand-off
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
