"""Bounded waits on the GeoDB: a deadline per call and a circuit breaker around an engine.

Every call a service makes to the GeoDB goes through `GuardedEngine`. A call that fails or takes
longer than `call_timeout` raises `GeoDBUnavailable`; after repeated failures the breaker opens and
calls fail at once (callers then use what they last knew, see docs/design/geodb-outage.md) until a
probe call succeeds. Transitions are logged once each, not once per login.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from palomar.cluster.breaker import Breaker, BreakerState
from palomar.geodb.engine import GeoDBError, GeoEngine, InsertResult, Key, Read, Row, Values

log = logging.getLogger("palomar.geodb")

T = TypeVar("T")

DEFAULT_CALL_TIMEOUT = 2.0
"""Seconds one GeoDB call may take: well under a mail client's patience (tens of seconds)."""


class GeoDBUnavailable(GeoDBError):
    """The GeoDB did not answer in time, failed, or is being skipped while the breaker is open."""


class GuardedEngine(GeoEngine):
    """Wraps an engine: each call within `call_timeout`, and a breaker shared by all calls."""

    def __init__(self, inner: GeoEngine, *, call_timeout: float = DEFAULT_CALL_TIMEOUT,
                 breaker: Breaker | None = None,
                 on_change: Callable[[bool], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.call_timeout = call_timeout
        self.breaker = breaker if breaker is not None else Breaker()
        self.on_change = on_change
        """Called with the new availability on each transition (metrics)."""
        self.clock = clock
        self.last_error = ""

    @property
    def available(self) -> bool:
        return self.breaker.available

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        now = self.clock()
        if not self.breaker.allow(now):
            raise GeoDBUnavailable(f"GeoDB unavailable (skipped while failing: {self.last_error})")
        try:
            async with asyncio.timeout(self.call_timeout):
                result = await call()
        except TimeoutError:
            self._failed(f"{what}: no answer within {self.call_timeout:g}s")
            raise GeoDBUnavailable(f"GeoDB {what}: no answer within {self.call_timeout:g}s") from None
        except GeoDBError as exc:
            self._failed(f"{what}: {exc}")
            raise GeoDBUnavailable(f"GeoDB {what}: {exc}") from exc
        except (OSError, RuntimeError) as exc:  # a driver's own connection errors
            self._failed(f"{what}: {exc}")
            raise GeoDBUnavailable(f"GeoDB {what}: {exc}") from exc
        if self.breaker.succeeded() is BreakerState.CLOSED:
            log.warning("GeoDB is answering again")
            if self.on_change is not None:
                self.on_change(True)
        return result

    def _failed(self, error: str) -> None:
        self.last_error = error
        if self.breaker.failed(self.clock()) is BreakerState.OPEN:
            log.warning("GeoDB unavailable (%s): serving from the LocalDB cache where safe, "
                      "retrying every %gs", error, self.breaker.open_seconds)
            if self.on_change is not None:
                self.on_change(False)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def upsert(self, table: str, key: Key, values: Values, *, timestamp: int | None = None) -> None:
        await self._call("write", lambda: self.inner.upsert(table, key, values, timestamp=timestamp))

    async def upsert_many(self, table: str, rows: Sequence[tuple[Key, Values]], *,
                          timestamp: int | None = None) -> None:
        await self._call("write", lambda: self.inner.upsert_many(table, rows, timestamp=timestamp))

    async def insert_if_absent(self, table: str, key: Key, values: Values) -> InsertResult:
        return await self._call("conditional write", lambda: self.inner.insert_if_absent(table, key, values))

    async def update_if(self, table: str, key: Key, values: Values, expected: Values) -> InsertResult:
        return await self._call("conditional write",
                                lambda: self.inner.update_if(table, key, values, expected))

    async def get(self, table: str, key: Key) -> Row | None:
        return await self._call("read", lambda: self.inner.get(table, key))

    async def select(self, table: str, partition: Key, clustering: Sequence[Any] = ()) -> list[Row]:
        return await self._call("read", lambda: self.inner.select(table, partition, clustering))

    async def read_many(self, reads: Sequence[Read]) -> list[Any]:
        return await self._call("read", lambda: self.inner.read_many(reads))

    async def read_then(self, reads: Sequence[Read], then: Callable[[list[Any]], Sequence[Read]]
                        ) -> tuple[list[Any], list[Any]]:
        return await self._call("read", lambda: self.inner.read_then(reads, then))

    async def scan(self, table: str) -> list[Row]:
        return await self._call("read", lambda: self.inner.scan(table))

    async def scan_page(self, table: str, after: Any, limit: int) -> list[Row]:
        return await self._call("read", lambda: self.inner.scan_page(table, after, limit))

    async def delete(self, table: str, key: Key, *, timestamp: int | None = None) -> None:
        await self._call("write", lambda: self.inner.delete(table, key, timestamp=timestamp))
