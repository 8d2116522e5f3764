"""Two datacenters: dc1 on 127.0.0.1, dc2 on 127.0.0.2, one keyspace replicated to both.

What the GeoDB relies on when a site is cut off: the other site keeps reading, writing and
running LOCAL_SERIAL lightweight transactions at LOCAL consistency; a cluster-wide SERIAL
transaction refuses instead of guessing; and when the site returns, repair brings its replica
to the same state, every column decided by its newest write time (deletes included),
whichever DC wrote it and in whatever order the writes arrived.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from palomar.geodb import GeoDBError, GeoEngine, open_engine
from palomar.geodb.engine import now_micros

KEYSPACE = "twodc"
REPLICATION = {"dc1": 1, "dc2": 1}


def spec(dc: int, **extra: Any) -> dict[str, Any]:
    return {"hosts": [f"127.0.0.{dc}"], "keyspace": KEYSPACE, "local_dc": f"dc{dc}",
            "replication": REPLICATION, **extra}


async def opened(dc: int, **extra: Any) -> GeoEngine:
    engine = open_engine("cassandra", **spec(dc, **extra))
    await engine.open()
    return engine


@pytest.fixture(scope="module")
def two_dcs(cassandra: Any) -> Iterator[Any]:
    """Node 2 joins the session's cluster for this module and leaves again afterwards."""
    cassandra.start(nodes=2)
    yield cassandra
    cassandra.stop(node=2)


@pytest.fixture
async def dc1(two_dcs: Any) -> AsyncIterator[GeoEngine]:
    engine = await opened(1)
    yield engine
    await engine.close()


async def test_both_datacenters_are_in_the_ring(two_dcs: Any) -> None:
    status = two_dcs.nodetool(1, "status")
    assert "Datacenter: dc1" in status and "Datacenter: dc2" in status
    assert [line.split()[:2] for line in status.splitlines() if line.startswith("UN")] == [
        ["UN", "127.0.0.1"], ["UN", "127.0.0.2"],
    ]


async def test_outage_of_dc2_then_convergence(two_dcs: Any, dc1: GeoEngine) -> None:
    t = now_micros()
    group = {"site_id": uuid.uuid4(), "name": "g-" + uuid.uuid4().hex}
    doomed = {"username": "doomed-" + uuid.uuid4().hex}
    contested = {"site_id": uuid.uuid4(), "id": uuid.uuid4()}
    placed = {"username": "placed-" + uuid.uuid4().hex}
    b_old, b_new = uuid.uuid4(), uuid.uuid4()

    # Before the outage: rows both DCs hold for sure (written at ALL).
    everywhere = await opened(1, write_consistency="ALL")
    try:
        await everywhere.upsert("users", doomed, {"group_name": "g", "metacache_last_host": "h"}, timestamp=t)
        await everywhere.upsert("backends", contested, {"host": "h0", "status": "s0"}, timestamp=t)
    finally:
        await everywhere.close()
    dc2 = await opened(2)
    try:
        row = await dc2.get("users", doomed)
        assert row is not None and row["metacache_last_host"] == "h"
    finally:
        await dc2.close()

    two_dcs.stop(node=2)

    # dc2 is down: dc1 keeps working at LOCAL_QUORUM / LOCAL_ONE / LOCAL_SERIAL.
    created = await dc1.insert_if_absent("user_groups", group, {"backend_id": b_old, "sticky_users": 1})
    assert created.applied and created.row["backend_id"] == b_old
    moved = await dc1.update_if("user_groups", group, {"backend_id": b_new}, {"backend_id": b_old})
    assert moved.applied and moved.row["backend_id"] == b_new and moved.row["sticky_users"] == 1
    assert not (await dc1.update_if("user_groups", group, {"backend_id": b_old}, {"backend_id": b_old})).applied
    await dc1.delete("users", doomed, timestamp=t + 50)
    await dc1.upsert("backends", contested, {"status": "dc1-newer", "host": "dc1-older"}, timestamp=t + 20)
    await dc1.upsert("users", placed, {"group_name": "from-dc1"}, timestamp=t + 5)
    assert await dc1.get("users", doomed) is None
    row = await dc1.get("user_groups", group)
    assert row is not None and row["backend_id"] == b_new

    # A cluster-wide SERIAL transaction needs dc2's replica too: it refuses instead of guessing.
    strict = await opened(1, serial_consistency="SERIAL")
    try:
        with pytest.raises(GeoDBError, match="Unavailable|Timeout"):
            await strict.insert_if_absent("users", {"username": "strict-" + uuid.uuid4().hex}, {})
    finally:
        await strict.close()

    two_dcs.start(nodes=2)
    dc2 = await opened(2)
    try:
        # Writes arriving at dc2 after its return, older and newer than dc1's outage writes.
        await dc2.upsert("backends", contested, {"status": "dc2-older", "host": "dc2-newer"}, timestamp=t + 10)
        await dc2.upsert("backends", contested, {"host": "dc2-newest"}, timestamp=t + 30)
        await dc2.upsert("users", doomed, {"group_name": "resurrect?"}, timestamp=t + 40)
        await dc2.upsert("users", placed, {"group_name": "from-dc2"}, timestamp=t + 6)

        two_dcs.nodetool(2, "repair", "-full", KEYSPACE)

        for engine in (dc1, dc2):
            assert await engine.get("users", doomed) is None
            row = await engine.get("backends", contested)
            assert row is not None
            assert (row["status"], row["host"]) == ("dc1-newer", "dc2-newest")
            assert row.writetimes == {"status": t + 20, "host": t + 30}
            row = await engine.get("user_groups", group)
            assert row is not None and (row["backend_id"], row["sticky_users"]) == (b_new, 1)
            row = await engine.get("users", placed)
            assert row is not None and row["group_name"] == "from-dc2"
    finally:
        await dc2.close()


async def test_first_start_with_the_other_dc_down_creates_the_schema_at_once(two_dcs: Any, caplog) -> None:
    """The first palomar process of a site creates keyspace and tables while the other DC is down.

    The driver never connects to dc2's node (local-DC policy), so it cannot know that node is
    down: its own agreement check would wait 10 s after every statement and then skip the
    metadata refresh ("keyspace did not appear"). dc1's nodes must agree; dc2 gets one bounded
    wait in all, and a warning.
    """
    two_dcs.stop(node=2)
    caplog.set_level(logging.WARNING, logger="palomar.geodb")
    started = time.monotonic()
    engine = open_engine("cassandra", hosts=["127.0.0.1"], keyspace="dc2_down", local_dc="dc1",
                         replication=REPLICATION)
    await engine.open()
    took = time.monotonic() - started
    try:
        await engine.upsert("users", {"username": "first"}, {"group_name": "g"})
        row = await engine.get("users", {"username": "first"})
        assert row is not None and row["group_name"] == "g"
    finally:
        await engine.close()
    assert took < 40, f"creating the schema took {took:.1f}s"
    assert any("127.0.0.2" in r.getMessage() and "do not have it yet" in r.getMessage() for r in caplog.records)

    # A keyspace without replicas in dc2 does not wait for dc2 at all.
    caplog.clear()
    local_only = open_engine("cassandra", hosts=["127.0.0.1"], keyspace="dc1_only", local_dc="dc1",
                             replication={"dc1": 1})
    await local_only.open()
    await local_only.close()
    assert not any("do not have it yet" in r.getMessage() for r in caplog.records)
