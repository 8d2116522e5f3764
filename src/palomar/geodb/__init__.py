"""The GeoDB: cluster state shared by every proxy, backend and controller of every site.

`open_engine` picks an engine by the configured driver name; everything above it is written
against the engine-neutral `GeoEngine` primitives.
"""

from __future__ import annotations

from typing import Any

from palomar.geodb.engine import GeoDBError, GeoEngine, InsertResult, Row, now_micros

__all__ = ["GeoDBError", "GeoEngine", "InsertResult", "Row", "now_micros", "open_engine"]

_SQLITE_OPTIONS = {"path", "busy_timeout_ms"}
_CASSANDRA_OPTIONS = {
    "hosts", "port", "keyspace", "local_dc", "replication", "write_consistency", "read_consistency",
    "serial_consistency", "connect_timeout", "request_timeout",
}


def open_engine(driver: str, **options: Any) -> GeoEngine:
    """Build (not yet open) the engine for `driver`; call `await engine.open()` next.

    "sqlite" takes `path` (and optionally `busy_timeout_ms`); "cassandra" takes `hosts` and
    the keyword options of `CassandraGeoEngine` (keyspace, local_dc, replication, ...).
    """
    if driver == "sqlite":
        unknown = sorted(set(options) - _SQLITE_OPTIONS)
        if unknown:
            raise GeoDBError(f"sqlite GeoDB: unknown option(s): {', '.join(unknown)}")
        if "path" not in options:
            raise GeoDBError("sqlite GeoDB: the 'path' option is required")
        from palomar.geodb.sqlite_engine import SQLiteGeoEngine

        return SQLiteGeoEngine(**options)
    if driver == "cassandra":
        unknown = sorted(set(options) - _CASSANDRA_OPTIONS)
        if unknown:
            raise GeoDBError(f"cassandra GeoDB: unknown option(s): {', '.join(unknown)}")
        if not options.get("hosts"):
            raise GeoDBError("cassandra GeoDB: the 'hosts' option (contact points) is required")
        from palomar.geodb.cassandra_engine import CassandraGeoEngine

        return CassandraGeoEngine(**options)
    raise GeoDBError(f"unsupported GeoDB driver {driver!r} (supported: sqlite, cassandra)")
