"""The engine-neutral GeoDB contract (tests/geodb_contract.py), run against the SQLite engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from geodb_contract import *  # noqa: F403  (the contract's Test* classes)
from palomar.geodb import GeoEngine, open_engine


@pytest.fixture
def engine_spec(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    return "sqlite", {"path": str(tmp_path / "geodb" / "geodb.sqlite")}


@pytest.fixture
async def engine(engine_spec: tuple[str, dict[str, Any]]) -> AsyncIterator[GeoEngine]:
    driver, options = engine_spec
    geo = open_engine(driver, **options)
    await geo.open()
    yield geo
    await geo.close()
