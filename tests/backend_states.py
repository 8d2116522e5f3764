"""A `palomar backend` state on a real SQLite GeoDB and LocalDB, for in-process tests of its login rules."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from palomar.backend.service import BackendState
from palomar.cluster.model import Backend, Site
from palomar.dovecot_login import DovecotEndpoint
from palomar.geodb.repository import GeoDB
from palomar.geodb.sqlite_engine import SQLiteGeoEngine
from palomar.localdb.store import LocalDB


async def backend_state(tmp_path: Path, engine: SQLiteGeoEngine, **options: Any) -> BackendState:
    """Backend 10.0.0.1, registered in site `east` beside backend 10.0.0.9; close `localdb` and `geodb` after."""
    await engine.open()
    geodb = GeoDB(engine)
    site = Site(id=uuid.uuid4(), name="east")
    assert await geodb.site_add(site)
    await geodb.backend_add(Backend(id=uuid.uuid4(), site_id=site.id, host="10.0.0.9"))
    localdb = LocalDB(str(tmp_path / "localdb.sqlite"))
    backend = BackendState(geodb=geodb, localdb=localdb, name="10.0.0.1", site_name="east", secret=b"s",
                           dovecot=DovecotEndpoint("127.0.0.1", {}, "master", "pw"), **options)
    await backend.register()
    return backend


class Clock:
    """A test clock for BackendState(clock=...): time moves only when a test sets `now`."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now
