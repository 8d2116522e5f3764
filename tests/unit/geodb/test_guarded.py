"""GuardedEngine over a real SQLite engine: bounded calls, the breaker, one log line per transition."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import uuid

import pytest

from palomar.cluster.breaker import Breaker
from palomar.cluster.model import Site
from palomar.geodb import open_engine
from palomar.geodb.guarded import GeoDBUnavailable, GuardedEngine
from palomar.geodb.repository import GeoDB


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def guarded(tmp_path):
    inner = open_engine("sqlite", path=str(tmp_path / "geodb.sqlite"), busy_timeout_ms=10_000)
    clock = Clock()
    changes: list[bool] = []
    engine = GuardedEngine(inner, call_timeout=0.3, breaker=Breaker(2, 5), on_change=changes.append, clock=clock)
    await engine.open()
    yield engine, clock, changes, tmp_path / "geodb.sqlite"
    await engine.close()


async def test_locked_file_times_out_then_breaker_skips_and_recovers(guarded, caplog) -> None:
    engine, clock, changes, path = guarded
    geodb = GeoDB(engine)
    site = Site(id=uuid.uuid4(), name="east")
    assert await geodb.site_add(site)
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # another process holds the file: every call blocks
    caplog.set_level(logging.INFO, logger="palomar.geodb")
    try:
        for _ in range(2):
            with pytest.raises(GeoDBUnavailable, match="no answer within"):
                await geodb.site_add(Site(id=uuid.uuid4(), name="west"))
        assert changes == [False] and not engine.available
        with pytest.raises(GeoDBUnavailable, match="skipped"):  # open: no wait at all
            await asyncio.wait_for(geodb.site_get(site.id), 0.05)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    clock.now = 5.0  # the probe
    for _ in range(50):  # the SQLite worker may still be finishing the abandoned calls
        try:
            assert (await geodb.site_get(site.id)) is not None
            break
        except GeoDBUnavailable:
            clock.now += 5.0
    assert changes == [False, True] and engine.available
    outage_lines = [r for r in caplog.records if "GeoDB unavailable (" in r.getMessage()]
    assert len(outage_lines) == 1, "one line per outage transition, not one per call"
