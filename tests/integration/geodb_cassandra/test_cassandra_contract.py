"""The engine-neutral GeoDB contract (tests/geodb_contract.py), run against a real Cassandra."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from geodb_contract import *  # noqa: F403  (the contract's Test* classes)
from palomar.geodb import GeoEngine, open_engine

KEYSPACE = "contract"


@pytest.fixture
def engine_spec(cassandra: Any) -> tuple[str, dict[str, Any]]:
    return "cassandra", {
        "hosts": ["127.0.0.1"],
        "keyspace": KEYSPACE,
        "local_dc": "dc1",
        "replication": {"dc1": 1},
    }


@pytest.fixture
async def engine(engine_spec: tuple[str, dict[str, Any]]) -> AsyncIterator[GeoEngine]:
    driver, options = engine_spec
    geo = open_engine(driver, **options)
    await geo.open()
    yield geo
    await geo.close()
