"""The GeoDB: cluster state shared by every proxy, backend and controller of every site.

`open_engine` picks an engine by the configured driver name; everything above it is written
against the engine-neutral `GeoEngine` primitives.
"""

from __future__ import annotations

from typing import Any

from palomar.geodb.engine import GeoDBError, GeoEngine, InsertResult, Row, now_micros

__all__ = ["GeoDBError", "GeoEngine", "InsertResult", "Row", "now_micros", "open_engine"]

_SQLITE_OPTIONS = {"path", "busy_timeout_ms"}


def open_engine(driver: str, **options: Any) -> GeoEngine:
    """Build (not yet open) the engine for `driver`; call `await engine.open()` next.

    "sqlite" takes `path` (and optionally `busy_timeout_ms`).
    """
    if driver == "sqlite":
        unknown = sorted(set(options) - _SQLITE_OPTIONS)
        if unknown:
            raise GeoDBError(f"sqlite GeoDB: unknown option(s): {', '.join(unknown)}")
        if "path" not in options:
            raise GeoDBError("sqlite GeoDB: the 'path' option is required")
        from palomar.geodb.sqlite_engine import SQLiteGeoEngine

        return SQLiteGeoEngine(**options)
    raise GeoDBError(f"unsupported GeoDB driver {driver!r} (supported: sqlite)")
