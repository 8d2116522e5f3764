"""Process entry points for the SQLite engine's multi-process tests.

They live outside the test modules so a spawned child can import them by a plain module name.
"""

from __future__ import annotations

import asyncio
import uuid

from palomar.geodb.sqlite_engine import SQLiteGeoEngine
from palomar.localdb import LocalDB


def open_and_write(path: str, worker: int, barrier) -> None:
    async def main() -> None:
        engine = SQLiteGeoEngine(path)
        barrier.wait(timeout=60)  # all create and open the new file at the same moment
        await engine.open()
        try:
            await engine.upsert("tags", {"id": uuid.UUID(int=worker + 1)}, {"tag": f"w{worker}"})
        finally:
            await engine.close()

    asyncio.run(main())


def put_users(path: str, worker: int, count: int, barrier) -> None:
    barrier.wait(timeout=60)  # every worker creates/opens the new file at the same moment
    with LocalDB(path) as local:
        for i in range(count):
            local.user_put("moving-group", f"w{worker}-u{i}", redirect_host=f"be{worker}", now=i)
            local.cache_put(f"w{worker}-{i}", "v", ttl_secs=100, now=0)
