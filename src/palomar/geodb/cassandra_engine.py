"""The GeoDB engine on Apache Cassandra: the tables of `schema.cql` in one keyspace.

Cassandra is where the contract's semantics come from (per-cell write times, tombstones,
lightweight transactions), so this engine mostly translates: upserts are `INSERT ... USING
TIMESTAMP` (an INSERT writes the row marker, a bound null writes a cell tombstone), deletes are
`DELETE ... USING TIMESTAMP`, reads select `writetime(col)` next to every value column, and the
two compare-and-set primitives are LWTs (`IF NOT EXISTS`, `IF col = ?`) at SERIAL or
LOCAL_SERIAL. The row an LWT returns is read back at the serial consistency, so it is the
linearised state with its write times, exactly what the SQLite engine returns.

The DataStax driver is callback based and runs its I/O on its own thread: every request is
`execute_async`, its ResponseFuture is bridged into an asyncio future with
`call_soon_threadsafe`, and the blocking steps (connect, prepare, schema agreement) run in a
worker thread, so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

from cassandra import ConsistencyLevel, DriverException
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, ResponseFuture
from cassandra.connection import ConnectionException
from cassandra.policies import DCAwareRoundRobinPolicy, HostDistance, TokenAwarePolicy
from cassandra.protocol import ErrorMessage
from cassandra.query import BatchStatement, BatchType, PreparedStatement, tuple_factory

from palomar.geodb.engine import GeoDBError, GeoEngine, InsertResult, Key, Row, Values, now_micros
from palomar.geodb.schema import (
    EPOCH,
    TableDef,
    datetime_to_millis,
    load_schema,
    millis_to_datetime,
    schema_text,
    table_def,
    validate_clustering,
    validate_delete_key,
    validate_key,
    validate_page_after,
    validate_partition,
    validate_timestamp,
    validate_values,
)

CONSISTENCY_LEVELS = (
    "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE",
)
SERIAL_LEVELS = ("SERIAL", "LOCAL_SERIAL")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}")
_DC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\s]+))(?::(?P<port>\d+))?$")
_NAIVE_EPOCH = EPOCH.replace(tzinfo=None)
# Profiles: plain writes, plain reads, LWTs (commit CL + serial CL), serial reads of LWT'd rows.
_WRITE, _READ, _LWT, _SERIAL_READ = EXEC_PROFILE_DEFAULT, "read", "lwt", "serial_read"
# NoHostAvailable (every host failed, each reason inside), a connection closing under a request
# (ConnectionShutdown) and the server errors without a driver exception of their own (ServerError,
# ProtocolError, ...: the ErrorMessage itself) are not DriverExceptions.
_DRIVER_ERRORS = (DriverException, NoHostAvailable, ConnectionException, ErrorMessage, OSError)
PROTOCOL_VERSION = 5  # Cassandra 4.0 and newer; pinned so the driver does not probe (and warn)
SCHEMA_AGREEMENT_TIMEOUT = 60.0
"""Seconds the nodes of the local datacenter get to agree on the schema after palomar's DDL."""
WRITE_WINDOW = 32
"""Batches of one `upsert_many` in flight at once: enough to keep the local nodes busy, few enough
not to queue past their request timeout."""
BATCH_ROWS = 50
BATCH_BYTES = 4096
"""Rows and (estimated) bytes per unlogged batch: under Cassandra's default 5 KiB batch warning."""
REMOTE_SCHEMA_WAIT = 10.0
"""Seconds other datacenters' nodes get to take the new schema (a node that is down never does)."""

T = TypeVar("T")
log = logging.getLogger("palomar.geodb")


class _OneLineDriverErrors(logging.Filter):
    """The driver logs each failed (re)connection to a node with a traceback, every few seconds
    while a node is down: keep its message and the error's one line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None:
            record.msg, record.args = f"{record.getMessage().rstrip(': ')}: {_describe(error)}", None
            record.exc_info = record.exc_text = None
        return True


def _quiet_driver_tracebacks() -> None:
    """Put the filter on every logger of the driver (a logger's filter sees only its own records)."""
    names = [n for n in logging.Logger.manager.loggerDict if n == "cassandra" or n.startswith("cassandra.")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OneLineDriverErrors) for f in logger.filters):
            logger.addFilter(_OneLineDriverErrors())


_quiet_driver_tracebacks()


def parse_hosts(hosts: str | Sequence[str], default_port: int) -> list[tuple[str, int]]:
    """Contact points from "host", "host:port" or "[v6]:port" words (a string or a list of them)."""
    words = hosts.replace(",", " ").split() if isinstance(hosts, str) else list(hosts)
    if not words:
        raise GeoDBError("cassandra GeoDB: no contact points (set cassandra_hosts)")
    out = []
    for word in words:
        match = _HOST_PORT.match(str(word).strip())
        port = int(match.group("port")) if match and match.group("port") else default_port
        if match is None or not 0 < port < 65536:
            raise GeoDBError(f"cassandra GeoDB: bad contact point {word!r} (expected host or host:port)")
        out.append((match.group("v6") or match.group("host"), port))
    return out


def parse_replication(words: str | Sequence[str]) -> dict[str, int]:
    """Replicas per datacenter from `dc:count` words (the `cassandra_replication` setting)."""
    items = words.replace(",", " ").split() if isinstance(words, str) else list(words)
    out: dict[str, int] = {}
    for item in items:
        dc, sep, count = str(item).rpartition(":")
        if not sep or not _DC.fullmatch(dc) or not count.isdigit():
            raise GeoDBError(f"cassandra GeoDB: bad replication {item!r} (expected datacenter:replicas)")
        out[dc] = int(count)
    return out


def _level(name: str, allowed: tuple[str, ...], what: str) -> int:
    key = str(name).strip().upper().replace("-", "_")
    if key not in allowed:
        raise GeoDBError(f"cassandra GeoDB: {what} {name!r} is not one of {', '.join(allowed)}")
    return getattr(ConsistencyLevel, key)  # type: ignore[no-any-return]


def cql_statements(text: str) -> list[str]:
    """The statements of a CQL file (comments dropped), as the driver executes them one by one."""
    body = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    return [s.strip() for s in body.split(";") if s.strip()]


def _q(name: str) -> str:
    return f'"{name}"'


def _to_cql(ctype: str, value: Any) -> Any:
    """A canonical value as the driver binds it (timestamps as exact epoch milliseconds)."""
    if value is not None and ctype == "timestamp":
        return datetime_to_millis(value)
    return value


def _from_cql(ctype: str, value: Any) -> Any:
    if value is None:
        return None
    if ctype == "timestamp" and isinstance(value, datetime):
        # the driver builds a naive UTC datetime through a float; snap back to the stored millisecond
        delta = value.replace(tzinfo=None) - _NAIVE_EPOCH
        millis = delta.days * 86_400_000 + delta.seconds * 1000 + round(delta.microseconds / 1000)
        return millis_to_datetime(millis)
    if ctype == "double":
        return float(value)
    return value


class _Table:
    """The CQL text of one table's queries, built once."""

    def __init__(self, tdef: TableDef) -> None:
        self.tdef = tdef
        self.name = _q(tdef.name)
        self.keys = tdef.key_columns
        self.vals = tdef.value_columns
        cols = [_q(c) for c in (*self.keys, *self.vals)] + [f"writetime({_q(c)})" for c in self.vals]
        self.select_list = ", ".join(cols)
        self.key_where = " AND ".join(f"{_q(c)} = ?" for c in self.keys)

    def where(self, columns: Sequence[str]) -> str:
        return " AND ".join(f"{_q(c)} = ?" for c in columns)

    def insert(self, columns: Sequence[str], suffix: str) -> str:
        names = [*self.keys, *columns]
        return (f"INSERT INTO {self.name} ({', '.join(_q(c) for c in names)}) "
                f"VALUES ({', '.join('?' for _ in names)}) {suffix}")

    def params(self, columns: Sequence[str], values: Mapping[str, Any]) -> list[Any]:
        return [_to_cql(self.tdef.columns[c], values[c]) for c in columns]

    def to_row(self, raw: Sequence[Any]) -> Row:
        names = (*self.keys, *self.vals)
        values = {c: _from_cql(self.tdef.columns[c], raw[i]) for i, c in enumerate(names)}
        base = len(names)
        writetimes = {
            c: raw[base + i]
            for i, c in enumerate(self.vals)
            if values[c] is not None and raw[base + i] is not None
        }
        return Row(values, writetimes)


class CassandraGeoEngine(GeoEngine):
    """GeoDB engine on an Apache Cassandra cluster (5.0; 4.x works too), one keyspace.

    `replication` maps datacenter names to replication factors for NetworkTopologyStrategy;
    it is used only when `open()` creates the keyspace (an existing keyspace is left as is).
    Without it, the keyspace gets min(3, nodes) replicas in every datacenter the driver sees.
    `local_dc` is the site's own datacenter: requests go only to its nodes, and the LOCAL_*
    consistency levels count only its replicas (the default when unset: the DC of the first
    contact point).
    """

    def __init__(
        self,
        hosts: str | Sequence[str],
        *,
        port: int = 9042,
        keyspace: str = "cluster",
        local_dc: str | None = None,
        replication: Mapping[str, int] | None = None,
        write_consistency: str = "LOCAL_QUORUM",
        read_consistency: str = "LOCAL_ONE",
        serial_consistency: str = "LOCAL_SERIAL",
        connect_timeout: float = 10.0,
        request_timeout: float = 20.0,
    ) -> None:
        if not isinstance(port, int) or not 0 < port < 65536:
            raise GeoDBError(f"cassandra GeoDB: bad port {port!r}")
        self.contact_points = parse_hosts(hosts, port)
        self.port = port
        if not isinstance(keyspace, str) or not _NAME.fullmatch(keyspace):
            raise GeoDBError(f"cassandra GeoDB: bad keyspace name {keyspace!r} (letters, digits, _; max 48)")
        self.keyspace = keyspace
        if local_dc is not None and (not isinstance(local_dc, str) or not _DC.fullmatch(local_dc)):
            raise GeoDBError(f"cassandra GeoDB: bad datacenter name {local_dc!r}")
        self.local_dc = local_dc or None
        self.replication = self._check_replication(replication)
        self.write_cl = _level(write_consistency, CONSISTENCY_LEVELS, "write consistency")
        self.read_cl = _level(read_consistency, CONSISTENCY_LEVELS, "read consistency")
        self.serial_cl = _level(serial_consistency, SERIAL_LEVELS, "serial consistency")
        self.connect_timeout = float(connect_timeout)
        self.request_timeout = float(request_timeout)
        self._schema = load_schema()
        self._tables = {name: _Table(tdef) for name, tdef in self._schema.items()}
        self._cluster: Cluster | None = None
        self._session: Any = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._preparing: dict[str, asyncio.Future[PreparedStatement]] = {}
        self._last_write_us = 0

    def __repr__(self) -> str:
        hosts = " ".join(f"{h}:{p}" for h, p in self.contact_points)
        return f"CassandraGeoEngine(hosts={hosts!r}, keyspace={self.keyspace!r}, local_dc={self.local_dc!r})"

    @staticmethod
    def _check_replication(replication: Mapping[str, int] | None) -> dict[str, int] | None:
        if not replication:
            return None
        if not isinstance(replication, Mapping):
            raise GeoDBError("cassandra GeoDB: replication must map datacenter names to replica counts")
        out = {}
        for dc, rf in replication.items():
            if not isinstance(dc, str) or not _DC.fullmatch(dc):
                raise GeoDBError(f"cassandra GeoDB: bad datacenter name {dc!r} in replication")
            if not isinstance(rf, int) or isinstance(rf, bool) or not 0 <= rf <= 32:
                raise GeoDBError(f"cassandra GeoDB: bad replication factor {rf!r} for datacenter {dc}")
            out[dc] = rf
        return out

    # ------------------------------------------------------------ open / close

    async def open(self) -> None:
        if self._session is not None:
            return
        def profile(cl: int, serial: int | None = None) -> ExecutionProfile:
            policy = TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=self.local_dc or ""))
            return ExecutionProfile(load_balancing_policy=policy, consistency_level=cl,
                                    serial_consistency_level=serial, request_timeout=self.request_timeout,
                                    row_factory=tuple_factory)

        profiles = {
            _WRITE: profile(self.write_cl),
            _READ: profile(self.read_cl),
            _LWT: profile(self.write_cl, self.serial_cl),
            _SERIAL_READ: profile(self.serial_cl),
        }
        # max_schema_agreement_wait=0: the driver would wait for every node it does not know to be
        # down, including other DCs' nodes it never connects to; _ensure_schema waits for this DC's.
        cluster = Cluster(
            contact_points=self.contact_points, port=self.port, execution_profiles=profiles,
            connect_timeout=self.connect_timeout, control_connection_timeout=self.connect_timeout,
            protocol_version=PROTOCOL_VERSION, max_schema_agreement_wait=0,
        )
        try:
            session = await asyncio.to_thread(cluster.connect)
        except _DRIVER_ERRORS as exc:
            await asyncio.to_thread(cluster.shutdown)
            raise GeoDBError(f"cassandra GeoDB {self._where()}: cannot connect: {_describe(exc)}") from exc
        self._cluster, self._session = cluster, session
        try:
            await self._ensure_schema()
        except BaseException:
            await self.close()
            raise

    def _where(self) -> str:
        return ",".join(f"{h}:{p}" for h, p in self.contact_points)

    async def close(self) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        self._prepared.clear()
        self._preparing.clear()
        if cluster is not None:
            await asyncio.to_thread(cluster.shutdown)

    def _default_replication(self) -> dict[str, int]:
        assert self._cluster is not None
        per_dc: dict[str, int] = {}
        for host in self._cluster.metadata.all_hosts():
            if host.datacenter:
                per_dc[host.datacenter] = per_dc.get(host.datacenter, 0) + 1
        if not per_dc:
            raise GeoDBError("cassandra GeoDB: cannot tell the cluster's datacenters; set the replication")
        return {dc: min(3, n) for dc, n in sorted(per_dc.items())}

    async def _ensure_schema(self) -> None:
        """Create the keyspace and the tables of schema.cql that are missing; add missing columns.

        DDL is skipped when the metadata already shows everything: concurrent `CREATE TABLE IF
        NOT EXISTS` through different coordinators can race, so openers after the first do none.
        The statements that do run all go to one node of the local DC (each sees the previous
        one's result), and then the local DC's nodes must agree on the schema before any
        statement is prepared; another DC that is down gets the schema when it returns.
        """
        assert self._cluster is not None
        ks_meta = self._cluster.metadata.keyspaces.get(self.keyspace)
        tables = ks_meta.tables if ks_meta is not None else {}
        statements = []
        if ks_meta is None:
            replication = self.replication or self._default_replication()
            spec = ", ".join(f"'{dc}': {rf}" for dc, rf in replication.items())
            statements.append(f"CREATE KEYSPACE IF NOT EXISTS {_q(self.keyspace)} WITH replication = "
                              f"{{'class': 'NetworkTopologyStrategy', {spec}}}")
        for stmt in cql_statements(schema_text()):
            name = re.search(r"exists\s+(\w+)", stmt, re.IGNORECASE)
            if name is None or name.group(1).lower() not in tables:
                statements.append(self._in_keyspace(stmt))
        await self._run_ddl(statements)
        ks_meta = self._cluster.metadata.keyspaces.get(self.keyspace)
        if ks_meta is None:
            raise GeoDBError(f"cassandra GeoDB: keyspace {self.keyspace} did not appear after creation")
        for t in self._tables.values():
            meta = ks_meta.tables.get(t.tdef.name)
            if meta is None:
                raise GeoDBError(f"cassandra GeoDB: table {self.keyspace}.{t.tdef.name} did not appear")
            pk = tuple(c.name for c in meta.partition_key), tuple(c.name for c in meta.clustering_key)
            if pk != (t.tdef.partition_key, t.tdef.clustering):
                raise GeoDBError(f"cassandra GeoDB: table {self.keyspace}.{t.tdef.name} has a different "
                                 f"primary key than schema.cql")
            missing = [c for c in t.vals if c not in meta.columns]
            await self._run_ddl([self._in_keyspace(f"ALTER TABLE {t.name} ADD {_q(c)} {t.tdef.columns[c]}")
                                 for c in missing])

    def _in_keyspace(self, stmt: str) -> str:
        return re.sub(r"^(create\s+table\s+if\s+not\s+exists\s+|alter\s+table\s+)",
                      lambda m: m.group(1) + f"{_q(self.keyspace)}.", stmt, count=1, flags=re.IGNORECASE)

    def _local_hosts(self) -> list[Any]:
        """The local DC's nodes the driver has a connection pool to (up), in a stable order."""
        assert self._cluster is not None
        hosts = [h for h in self._cluster.metadata.all_hosts()
                 if h.is_up and self._cluster.profile_manager.distance(h) == HostDistance.LOCAL]
        return sorted(hosts, key=lambda h: str(h.endpoint))

    async def _run_ddl(self, statements: list[str]) -> None:
        """Run schema statements on one local node, wait for the schema to settle, refresh metadata.

        Everything blocking (DDL, reading the nodes' schema versions) runs in a worker thread.
        """
        if not statements:
            return
        session, cluster = self._live_session(), self._cluster
        assert cluster is not None
        hosts = self._local_hosts()
        if not hosts:
            raise GeoDBError(f"cassandra GeoDB {self._where()}: no node of the local datacenter is up")
        timeout = max(self.request_timeout, 60.0)
        for stmt in statements:
            try:
                await asyncio.to_thread(session.execute, stmt, timeout=timeout, host=hosts[0])
            except _DRIVER_ERRORS as exc:
                raise GeoDBError(f"cassandra GeoDB: schema statement failed: {_describe(exc)}") from exc
        await self._await_schema_agreement(hosts)
        try:
            await asyncio.to_thread(cluster.refresh_schema_metadata, 0)
        except _DRIVER_ERRORS as exc:
            raise GeoDBError(f"cassandra GeoDB: cannot read the schema back: {_describe(exc)}") from exc

    async def _await_schema_agreement(self, hosts: list[Any]) -> None:
        """Until the local DC's nodes agree on the schema (required) and the nodes of the other DCs
        holding replicas of the keyspace have it too (for at most REMOTE_SCHEMA_WAIT: the driver
        cannot tell a down node of another DC from a slow one, it never connects to them, and a down
        node takes the schema when it returns)."""
        started = time.monotonic()
        while True:
            local, lagging = await asyncio.to_thread(self._schema_versions, hosts)
            waited = time.monotonic() - started
            if len(local) <= 1:
                if not lagging:
                    return
                if waited > REMOTE_SCHEMA_WAIT:
                    log.warning("GeoDB schema created; node(s) %s of other datacenters do not have it yet "
                                "(down?), they take it when they return", ", ".join(lagging))
                    return
            elif waited > SCHEMA_AGREEMENT_TIMEOUT:
                raise GeoDBError(f"cassandra GeoDB: the local datacenter's nodes did not agree on the schema "
                                 f"within {SCHEMA_AGREEMENT_TIMEOUT:.0f}s")
            await asyncio.sleep(0.2)

    def _schema_versions(self, hosts: list[Any]) -> tuple[set[Any], list[str]]:
        """(schema versions of the local DC's up nodes, other DCs' peers without the first one's version).

        Blocking: runs in a worker thread. The peers' versions are the first host's gossip view.
        """
        session = self._live_session()
        local: set[Any] = set()
        for host in hosts:
            try:
                rows = session.execute("SELECT schema_version FROM system.local", timeout=self.request_timeout,
                                       host=host)
            except _DRIVER_ERRORS:
                continue  # a node going down now does not hold up the others
            local.update(row[0] for row in rows)
        try:
            peers = session.execute("SELECT peer, data_center, schema_version FROM system.peers",
                                    timeout=self.request_timeout, host=hosts[0])
        except _DRIVER_ERRORS:
            return local, []
        mine = next(iter(local)) if len(local) == 1 else None
        local_dcs, replica_dcs = {h.datacenter for h in hosts}, self._replica_dcs()
        return local, [str(peer) for peer, dc, version in peers
                       if dc not in local_dcs and version != mine and (replica_dcs is None or dc in replica_dcs)]

    def _replica_dcs(self) -> set[str] | None:
        """The datacenters holding replicas of the keyspace (None: not known, count them all)."""
        assert self._cluster is not None
        meta = self._cluster.metadata.keyspaces.get(self.keyspace)
        factors = getattr(getattr(meta, "replication_strategy", None), "dc_replication_factors", None)
        if factors:
            return {dc for dc, rf in factors.items() if int(rf) > 0}
        if self.replication:
            return {dc for dc, rf in self.replication.items() if rf > 0}
        return None

    # ------------------------------------------------------------ plumbing

    def _live_session(self) -> Any:
        if self._session is None:
            raise GeoDBError(f"{self!r} is not open")
        return self._session

    def _table(self, name: str) -> _Table:
        table_def(self._schema, name)  # the uniform "unknown table" error
        return self._tables[name]

    async def _prepare(self, query: str) -> PreparedStatement:
        """One prepared statement per query shape, prepared once even when many tasks ask at once."""
        stmt = self._prepared.get(query)
        if stmt is not None:
            return stmt
        pending = self._preparing.get(query)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            session = self._live_session()
            pending = asyncio.ensure_future(asyncio.to_thread(session.prepare, query))
            self._preparing[query] = pending
        try:
            stmt = await asyncio.shield(pending)
        except _DRIVER_ERRORS as exc:
            raise GeoDBError(f"cassandra GeoDB: cannot prepare {query!r}: {_describe(exc)}") from exc
        finally:
            if pending.done() and self._preparing.get(query) is pending:
                del self._preparing[query]
        self._prepared[query] = stmt
        return stmt

    async def _run(self, query: str, params: Sequence[Any], profile: Any) -> tuple[list[Any], ResponseFuture]:
        """Execute a prepared `query`, every result page, without blocking the event loop."""
        stmt = await self._prepare(query.replace("{ks}", _q(self.keyspace)))
        session = self._live_session()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        try:
            rf = session.execute_async(stmt, list(params), execution_profile=profile)
        except _DRIVER_ERRORS as exc:
            raise GeoDBError(f"cassandra GeoDB: {_describe(exc)}") from exc

        def on_page(page: list[Any] | None) -> None:  # driver thread; page is None for writes
            try:
                rows.extend(page or ())
                if rf.has_more_pages:
                    rf.start_fetching_next_page()
                    return
            except BaseException as exc:  # must reach the awaiting task, not die in the driver
                loop.call_soon_threadsafe(_settle, done, None, exc)
                return
            loop.call_soon_threadsafe(_settle, done, rows, None)

        def on_error(exc: BaseException) -> None:  # driver thread
            loop.call_soon_threadsafe(_settle, done, None, exc)

        rf.add_callbacks(on_page, on_error)
        try:
            return await done, rf
        except _DRIVER_ERRORS as exc:
            raise GeoDBError(f"cassandra GeoDB: {_describe(exc)}") from exc

    def _stamp(self, timestamp: int | None) -> int:
        ts = now_micros() if timestamp is None else validate_timestamp(timestamp)
        if ts > self._last_write_us:
            self._last_write_us = ts
        return ts

    async def _lwt_after_own_writes(self) -> None:
        """Let the clock pass the millisecond of this engine's newest plain write before an LWT.

        Cassandra stamps a Paxos write with the coordinator's clock in whole milliseconds, while
        plain writes carry our microsecond time: an LWT issued in the same millisecond as our
        own delete would otherwise be hidden by that tombstone (and lose to an upsert's cells).
        """
        wait_ns = (self._last_write_us // 1000 + 1) * 1_000_000 - time.time_ns()
        if 0 < wait_ns <= 5_000_000:
            await asyncio.sleep(wait_ns / 1e9)

    # ------------------------------------------------------------ writes

    async def upsert(self, table: str, key: Key, values: Values, *, timestamp: int | None = None) -> None:
        t = self._table(table)
        k = validate_key(t.tdef, key)
        v = validate_values(t.tdef, values)
        cols = sorted(v)
        ts = self._stamp(timestamp)
        query = t.insert(cols, "USING TIMESTAMP ?").replace("INTO ", "INTO {ks}.", 1)
        await self._run(query, [*t.params(t.keys, k), *t.params(cols, v), ts], _WRITE)

    async def upsert_many(self, table: str, rows: Sequence[tuple[Key, Values]], *,
                          timestamp: int | None = None) -> None:
        """Bulk provisioning: the rows in unlogged batches of rows that share their replicas, at most
        `WRITE_WINDOW` batches in flight.

        A batch whose partitions all live on the same replicas is written by a coordinator that is
        one of them, in one request, so none of the cost Cassandra warns of for multi-partition
        batches (a coordinator forwarding rows to other nodes) arises; what is saved is the cost
        per request, client and server: 3-4 times the users per second of one request per row on
        a two-core machine (docs/benchmarks.md). Cassandra still logs, at most once a minute,
        "Unlogged batch covering N partitions". Batches stay under its batch size warning
        (`batch_size_warn_threshold`, 5 KiB). Not atomic across
        rows, as the contract says; one write time for every row, as the SQLite engine's one
        transaction. The first failure stops the sending and is raised once the requests in
        flight have ended."""
        t = self._table(table)
        ts = self._stamp(timestamp)
        work: list[tuple[str, list[Any]]] = []
        for key, values in rows:
            k = validate_key(t.tdef, key)
            v = validate_values(t.tdef, values)
            cols = sorted(v)
            query = t.insert(cols, "USING TIMESTAMP ?").replace("INTO ", "INTO {ks}.", 1)
            work.append((query, [*t.params(t.keys, k), *t.params(cols, v), ts]))
        if not work:
            return
        prepared = {q: await self._prepare(q.replace("{ks}", _q(self.keyspace))) for q in {q for q, _ in work}}
        session = self._live_session()
        metadata = session.cluster.metadata
        bound = []
        for query, params in work:
            stmt = prepared[query].bind(params)
            replicas = tuple(sorted(str(h.endpoint) for h in metadata.get_replicas(self.keyspace, stmt.routing_key)))
            bound.append((replicas, _cell_bytes(stmt.values), stmt))
        batches = []
        for group in write_batches(bound, BATCH_ROWS, BATCH_BYTES):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for stmt in group:
                batch.add(stmt)
            batches.append(batch)
        await _Window(session, batches, _WRITE, asyncio.get_running_loop()).run()

    async def insert_if_absent(self, table: str, key: Key, values: Values) -> InsertResult:
        t = self._table(table)
        k = validate_key(t.tdef, key)
        v = validate_values(t.tdef, values)
        cols = sorted(v)
        await self._lwt_after_own_writes()
        query = t.insert(cols, "IF NOT EXISTS").replace("INTO ", "INTO {ks}.", 1)
        rows, _ = await self._run(query, [*t.params(t.keys, k), *t.params(cols, v)], _LWT)
        return InsertResult(self._applied(rows), await self._row_now(t, k))

    async def update_if(self, table: str, key: Key, values: Values, expected: Values) -> InsertResult:
        t = self._table(table)
        k = validate_key(t.tdef, key)
        v = validate_values(t.tdef, values)
        e = validate_values(t.tdef, expected, "expected")
        if not v:
            raise GeoDBError(f"{table}: update_if needs at least one column to write")
        if not e:
            raise GeoDBError(f"{table}: update_if needs at least one expected column")
        sets, conds = sorted(v), sorted(e)
        await self._lwt_after_own_writes()
        query = (f"UPDATE {{ks}}.{t.name} SET {', '.join(f'{_q(c)} = ?' for c in sets)} "
                 f"WHERE {t.key_where} IF {' AND '.join(f'{_q(c)} = ?' for c in conds)}")
        params = [*t.params(sets, v), *t.params(t.keys, k), *t.params(conds, e)]
        rows, _ = await self._run(query, params, _LWT)
        return InsertResult(self._applied(rows), await self._row_now(t, k))

    @staticmethod
    def _applied(rows: list[Any]) -> bool:
        if len(rows) != 1 or not isinstance(rows[0][0], bool):
            raise GeoDBError("cassandra GeoDB: unexpected lightweight transaction result")
        return rows[0][0]

    async def _row_now(self, t: _Table, key: dict[str, Any]) -> Row:
        """The row as stored after an LWT, read at the serial consistency (sees every committed LWT)."""
        rows, _ = await self._run(f"SELECT {t.select_list} FROM {{ks}}.{t.name} WHERE {t.key_where}",
                                  t.params(t.keys, key), _SERIAL_READ)
        if rows:
            return t.to_row(rows[0])
        return Row({**key, **dict.fromkeys(t.vals)}, {})

    async def delete(self, table: str, key: Key, *, timestamp: int | None = None) -> None:
        t = self._table(table)
        k, whole_partition = validate_delete_key(t.tdef, key)
        cols = t.tdef.partition_key if whole_partition else t.keys
        ts = self._stamp(timestamp)
        query = f"DELETE FROM {{ks}}.{t.name} USING TIMESTAMP ? WHERE {t.where(cols)}"
        await self._run(query, [ts, *t.params(cols, k)], _WRITE)

    # ------------------------------------------------------------ reads

    async def get(self, table: str, key: Key) -> Row | None:
        t = self._table(table)
        k = validate_key(t.tdef, key)
        rows, _ = await self._run(f"SELECT {t.select_list} FROM {{ks}}.{t.name} WHERE {t.key_where}",
                                  t.params(t.keys, k), _READ)
        return t.to_row(rows[0]) if rows else None

    async def select(self, table: str, partition: Key, clustering: Sequence[Any] = ()) -> list[Row]:
        t = self._table(table)
        p = validate_partition(t.tdef, partition)
        prefix = validate_clustering(t.tdef, clustering)
        ccols = t.tdef.clustering[: len(prefix)]
        cols = [*t.tdef.partition_key, *ccols]
        params = t.params(t.tdef.partition_key, p) + t.params(ccols, dict(zip(ccols, prefix, strict=True)))
        rows, _ = await self._run(f"SELECT {t.select_list} FROM {{ks}}.{t.name} WHERE {t.where(cols)}",
                                  params, _READ)
        return [t.to_row(r) for r in rows]

    async def scan(self, table: str) -> list[Row]:
        t = self._table(table)
        rows, _ = await self._run(f"SELECT {t.select_list} FROM {{ks}}.{t.name}", [], _READ)
        return [t.to_row(r) for r in rows]

    async def scan_page(self, table: str, after: Any, limit: int) -> list[Row]:
        # Token order is the order of a full scan; a page resumes after the last row's token.
        t = self._table(table)
        col, start = validate_page_after(t.tdef, after)
        where = "" if start is None else f" WHERE token({_q(col)}) > token(?)"
        params = [] if start is None else t.params([col], {col: start})
        rows, _ = await self._run(f"SELECT {t.select_list} FROM {{ks}}.{t.name}{where} LIMIT {max(int(limit), 1)}",
                                  params, _READ)
        return [t.to_row(r) for r in rows]


def _cell_bytes(values: Sequence[bytes | None]) -> int:
    """What Cassandra counts of a bound row against its batch size limit: each cell's bytes plus
    its overhead (write time, flags), over-estimated so that a full batch stays under the limit."""
    return 32 + sum(32 + len(v or b"") for v in values)


def write_batches(rows: Sequence[tuple[Hashable, int, T]], max_rows: int, max_bytes: int) -> list[list[T]]:
    """Rows `(replicas, size, item)` in batches of the same replicas, each at most `max_rows` rows
    and `max_bytes` bytes (a single row larger than that is a batch of its own), in first-seen order."""
    open_batches: dict[Hashable, tuple[list[T], int]] = {}
    out: list[list[T]] = []
    for replicas, size, item in rows:
        batch, total = open_batches.get(replicas, ([], 0))
        if batch and (len(batch) >= max_rows or total + size > max_bytes):
            batch, total = [], 0
        if not batch:
            out.append(batch)
        batch.append(item)
        open_batches[replicas] = (batch, total + size)
    return out


class _Window:
    """Runs `statements` with at most WRITE_WINDOW requests in flight, refilled from the driver's
    callbacks (its I/O thread: no thread hop per request); the asyncio future ends once every
    request has, with the first error. One thread at a time sends (`pumping`): a callback that
    runs inside `execute_async`'s caller (a request already answered) only counts, so a long
    run of such answers never recurses."""

    def __init__(self, session: Any, statements: Sequence[Any], profile: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.session, self.statements, self.profile, self.loop = session, statements, profile, loop
        self.done: asyncio.Future[None] = loop.create_future()
        self.lock = threading.Lock()
        self.next = 0
        self.in_flight = 0
        self.pumping = False
        self.settled = False
        self.error: BaseException | None = None

    async def run(self) -> None:
        self._pump()
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            with self.lock:  # send no more; the requests in flight end on their own
                self.next = len(self.statements)
            raise
        except _DRIVER_ERRORS as exc:
            raise GeoDBError(f"cassandra GeoDB: {_describe(exc)}") from exc

    def _pump(self) -> None:
        """Send while the window has room (any thread); settle the future once nothing is left."""
        with self.lock:
            if self.pumping:
                return
            self.pumping = True
        while True:
            with self.lock:
                if self.error is None and self.next < len(self.statements) and self.in_flight < WRITE_WINDOW:
                    stmt = self.statements[self.next]
                    self.next += 1
                    self.in_flight += 1
                else:
                    self.pumping = False
                    finished = self.in_flight == 0 and not self.settled
                    self.settled = self.settled or finished
                    break
            try:
                self.session.execute_async(stmt, execution_profile=self.profile).add_callbacks(
                    self._answered, self._ended)
            except _DRIVER_ERRORS as exc:
                self._ended(exc)
        if finished:
            self.loop.call_soon_threadsafe(_settle, self.done, None, self.error)

    def _answered(self, _rows: Any) -> None:
        self._ended(None)

    def _ended(self, exc: BaseException | None) -> None:
        with self.lock:
            self.in_flight -= 1
            if exc is not None and self.error is None:
                self.error = exc
        self._pump()


def _settle(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the awaiting task was cancelled
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _describe(exc: BaseException) -> str:
    """A one-line reason from a driver exception (NoHostAvailable nests one error per host)."""
    if isinstance(exc, NoHostAvailable) and exc.errors:
        reasons = "; ".join(f"{host}: {_describe(err) if isinstance(err, BaseException) else err}"
                            for host, err in exc.errors.items())
        return f"no host available ({reasons})"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
