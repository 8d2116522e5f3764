"""What every long-running role shares: logging setup, opening the stores, signal handling."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import resource
import signal
import ssl
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from palomar.cluster.breaker import Breaker
from palomar.config import Config
from palomar.geodb import open_engine
from palomar.geodb.guarded import GuardedEngine
from palomar.geodb.repository import GeoDB
from palomar.localdb import LocalDB
from palomar.logsafe import OneLineFormatter
from palomar.metrics.registry import Registry

log = logging.getLogger("palomar")

RESTART_NEEDED = "listeners, GeoDB, passdb list, hop secret and every other setting need a restart"
"""What SIGHUP does not reload, said in its log line so operators do not wait for it."""


def setup_logging(cfg: Config, role: str) -> None:
    """One line per event, `key=value` fields; to `log_path` or stderr. No message can span lines,
    whatever a call site passed (see palomar.logsafe)."""
    path = cfg["log_path"]
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter(f"%(asctime)s {role}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if os.environ.get("PALOMAR_DEBUG") else logging.INFO)
    # The format uses none of these, and a proxy logs a line per session: skip collecting them
    # (the logging documentation's "Optimization" list; the caller's frame walk is the dearest).
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]


@contextmanager
def pid_file(cfg: Config, role: str) -> Iterator[Path]:
    """Hold `base_dir/ROLE.pid` (Dovecot's master.pid) while the role runs.

    A second process of the same role and base_dir would share the listening ports (SO_REUSEPORT
    lets it bind them) and the LocalDB, so it stops with one line instead. The file is locked,
    not just written, so a file left by a killed process never blocks a start."""
    path = Path(cfg["base_dir"]) / f"{role}.pid"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise RuntimeError(f"another palomar {role} runs with this base_dir (PID {other or 'unknown'}, {path}); "
                           "stop it first, or give this one its own base_dir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard one (every session holds one or two descriptors;
    distributions start services with a soft limit of 1024). Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logging.getLogger("palomar").warning("cannot raise the open-files limit from %d to %d: %s",
                                                 soft, hard, exc)
    return soft


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


def geodb_available_gauge(registry: Registry, fallback: str) -> Callable[[bool], None]:
    """The `geodb_available` gauge (1 while the GeoDB answers, 0 while the service serves `fallback`,
    docs/design/geodb-outage.md) and the `on_change` for `open_geodb` that keeps it."""
    available = registry.gauge("geodb_available", f"1 while the GeoDB answers; 0 while this {fallback} "
                               "(docs/design/geodb-outage.md)")
    available.set(1.0)
    return lambda ok: available.set(1.0 if ok else 0.0)


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


def reload_server_tls(context: ssl.SSLContext | None, cfg: Config) -> list[str]:
    """Load the certificate and key files again into the listeners' context (new handshakes use
    them); a broken pair is logged and the old one kept."""
    if context is None:
        return []
    cert, key = str(cfg["ssl_server_cert_file"]), str(cfg["ssl_server_key_file"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        log.error("reload: TLS certificate %s not reloaded, keeping the old one: %s", cert, exc)
        return []
    return [f"TLS certificate {cert}"]


def reopen_log_files() -> list[str]:
    """Open the log file again by its name (after logrotate renamed it); the old one is closed."""
    reopened = []
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            continue
        try:
            stream = open(handler.baseFilename, handler.mode, encoding=handler.encoding,  # noqa: SIM115
                          errors=handler.errors)
        except OSError as exc:
            log.error("reload: cannot reopen log file %s, still writing to the old one: %s",
                      handler.baseFilename, exc.strerror)
            continue
        old = handler.setStream(stream)
        if old is not None:
            old.close()
        reopened.append(f"log file {handler.baseFilename}")
    return reopened


def reload(extra: Callable[[], list[str]] | None = None) -> None:
    """SIGHUP: reopen the log file, reload what the role can reload, say what needs a restart."""
    done = reopen_log_files() + (extra() if extra is not None else [])
    log.info("reload (SIGHUP): reopened/reloaded %s; passwd-files are re-read whenever they change; %s",
             ", ".join(done) or "nothing", RESTART_NEEDED)


def stop_signal(on_reload: Callable[[], list[str]] | None = None) -> asyncio.Future[str]:
    """A future done (with the signal's name) on SIGTERM or SIGINT; SIGHUP reloads (see `reload`)."""
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[str] = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda name=sig.name: stop.done() or stop.set_result(name))
    loop.add_signal_handler(signal.SIGHUP, reload, on_reload)
    stop.add_done_callback(lambda done: log.info("stopping on %s", done.result()))
    return stop


async def wait_for_stop_signal(on_reload: Callable[[], list[str]] | None = None) -> None:
    """Return on SIGTERM or SIGINT; on SIGHUP reload and keep running."""
    await stop_signal(on_reload)
