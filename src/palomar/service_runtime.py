"""What every long-running role shares: logging setup, opening the stores, signal handling."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path

from palomar.cluster.breaker import Breaker
from palomar.config import Config
from palomar.geodb import open_engine
from palomar.geodb.guarded import GuardedEngine
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB


def setup_logging(cfg: Config, role: str) -> None:
    """One line per event, `key=value` fields; to `log_path` or stderr."""
    path = cfg["log_path"]
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if os.environ.get("PALOMAR_DEBUG") else logging.INFO)
    # The format uses none of these, and a proxy logs a line per session: skip collecting them
    # (the logging documentation's "Optimization" list; the caller's frame walk is the dearest).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]


def geodb_engine_options(cfg: Config) -> tuple[str, dict]:
    """The GeoDB driver named by the config and the options its engine takes."""
    driver = cfg["cluster_geodb_driver"]
    if driver == "sqlite":
        return driver, {"path": str(cfg["cluster_geodb_path"])}
    from palomar.geodb.cassandra_engine import parse_replication

    return driver, {
        "hosts": cfg["cassandra_hosts"],
        "port": cfg["cassandra_port"],
        "keyspace": cfg["cassandra_keyspace"],
        "local_dc": cfg["cassandra_local_dc"] or None,
        "replication": parse_replication(cfg["cassandra_replication"]),
        "write_consistency": cfg["cassandra_write_consistency"],
        "read_consistency": cfg["cassandra_read_consistency"],
        "serial_consistency": cfg["cassandra_serial_consistency"],
    }


async def open_geodb(cfg: Config, on_change: Callable[[bool], None] | None = None) -> GeoDB:
    """The GeoDB of a long-running service: every call bounded, a breaker around the engine.

    Opening waits for the GeoDB (a service that never saw it has nothing to fall back on)."""
    driver, options = geodb_engine_options(cfg)
    engine = open_engine(driver, **options)
    await engine.open()
    return GeoDB(GuardedEngine(
        engine, call_timeout=cfg["cluster_geodb_timeout"], on_change=on_change,
        breaker=Breaker(failures_to_open=max(1, cfg["cluster_geodb_breaker_failures"]),
                        open_seconds=cfg["cluster_geodb_breaker_retry"]),
    ))


def open_localdb(cfg: Config) -> LocalDB:
    path = Path(str(cfg["cluster_localdb_path"]))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return LocalDB(str(path), stale_keep_secs=int(cfg["cluster_geodb_stale_max"]))


def server_tls_context(cfg: Config) -> ssl.SSLContext | None:
    """The TLS context for client-facing listeners, or None when `ssl = no` or no certificate."""
    if cfg["ssl"] == "no" or not cfg["ssl_server_cert_file"]:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cfg["ssl_server_cert_file"]), str(cfg["ssl_server_key_file"]))
    return context


async def wait_for_stop_signal() -> None:
    """Return on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    await stop
