"""Dovecot's ``sql`` passdb: ``args`` names a ``dovecot-sql.conf.ext`` with ``driver = pgsql|sqlite``.

PostgreSQL is queried through asyncpg on the event loop (a pool of at most ``maxconns``
connections, bounded connect and query timeouts); SQLite, the embedded choice, runs in a
worker thread like the passwd-file. The query is Dovecot's ``password_query`` with ``%``
variables expanded and SQL-escaped as Dovecot does (a ``'`` doubled), so an existing
``dovecot-sql.conf.ext`` works unchanged. The row's ``password`` column is the stored
password; every other non-NULL column is an extra field (``proxy``, ``host``, ``nologin``,
``reason``...), NULL meaning "not set" as in Dovecot.

A database that cannot be reached, a query error, a timeout, a row without a ``password``
column or several rows: each is a temporary failure of the passdb, never a wrong password.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from palomar.auth.driver import DriverLookup, compile_fields
from palomar.auth.ext_file import ExtFileError, read_ext, refuse_unknown
from palomar.auth.schemes import is_known_scheme
from palomar.auth.variables import Template, VariableError

log = logging.getLogger(__name__)

# Dovecot's default_pass_scheme for sql (dovecot-sql.conf.ext says MD5; the code's default is MD5-CRYPT).
SQL_DEFAULT_SCHEME = "MD5-CRYPT"
# `user_query`, `iterate_query`... are for a userdb, which palomar's proxies do not have; the file is
# often shared with the backends' Dovecot, so they are read and left to it.
USERDB_ONLY = frozenset({"user_query", "iterate_query", "update_query", "userdb_warning_disable"})
_KNOWN = frozenset({"driver", "connect", "password_query", "default_pass_scheme"}) | USERDB_ONLY
DEFAULT_CONNECT_TIMEOUT = 5.0
QUERY_TIMEOUT = 5.0
DEFAULT_MAXCONNS = 5
_PG_KEYS = frozenset({"host", "port", "dbname", "user", "password", "connect_timeout", "sslmode",
                      "application_name", "maxconns"})
_SSLMODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


class SqlArgsError(ValueError):
    """The sql passdb's args file is missing, unreadable or not usable."""


def sql_escape(value: str) -> str:
    """Dovecot's escaping of a variable inside a quoted SQL literal: ``'`` doubled.

    PostgreSQL's standard_conforming_strings (on since 9.1) keeps ``\\`` literal, so only
    the quote needs doubling, as libpq's PQescapeStringConn does then; SQLite is the same.
    """
    return value.replace("'", "''")


@dataclass(frozen=True)
class SqlConf:
    """The settings of one dovecot-sql.conf.ext that a passdb uses."""

    driver: str
    connect: str = field(repr=False)
    password_query: Template = field(repr=False)
    default_pass_scheme: str = SQL_DEFAULT_SCHEME

    @classmethod
    def from_settings(cls, settings: dict[str, str], source: str) -> SqlConf:
        try:
            refuse_unknown(settings, _KNOWN, source)
        except ExtFileError as exc:
            raise SqlArgsError(str(exc)) from None
        driver = settings.get("driver", "")
        if driver not in ("pgsql", "sqlite"):
            raise SqlArgsError(f"{source}: driver = {driver or '(empty)'} is not supported (pgsql or sqlite)")
        if not settings.get("connect"):
            raise SqlArgsError(f"{source}: connect is not set")
        query = settings.get("password_query", "")
        if not query:
            raise SqlArgsError(f"{source}: password_query is not set")
        scheme = (settings.get("default_pass_scheme") or SQL_DEFAULT_SCHEME).upper()
        if not is_known_scheme(scheme):
            raise SqlArgsError(f"{source}: unknown default_pass_scheme {scheme!r}")
        try:
            template = Template.parse(query)
        except VariableError as exc:
            raise SqlArgsError(f"{source}: password_query: {exc}") from None
        return cls(driver, settings["connect"], template, scheme)


def read_sql_conf(path: str) -> SqlConf:
    try:
        return SqlConf.from_settings(read_ext(path), path)
    except ExtFileError as exc:
        raise SqlArgsError(str(exc)) from None


def render_query(conf: SqlConf, values: Mapping[str, str]) -> str | None:
    """The query for this request; None when a value holds a NUL (no SQL string can carry it)."""
    if any("\0" in values.get(name, "") for name in conf.password_query.names):
        return None
    return conf.password_query.render(values, sql_escape)


def cache_key(template: Template, values: Mapping[str, str]) -> str:
    """Dovecot's cache key for a query: the values of every variable it uses."""
    return "\t".join(f"{name}={values.get(name, '')}" for name in sorted(template.names))


def text_value(value: Any) -> str:
    """A column value as the text Dovecot's SQL drivers see (PostgreSQL's ``t``/``f`` booleans)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def rows_to_lookup(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, user: str,
                   default_scheme: str) -> DriverLookup:
    """Dovecot's reading of a password_query result (pure, table-tested).

    No row: unknown user. More than one, or no ``password``/``password_noscheme`` column: the
    passdb is misconfigured, a temporary failure. ``password_noscheme`` is taken whole even if
    it starts with ``{``. ``username``/``domain`` columns rename the user like ``user``.
    """
    if not rows:
        return DriverLookup(found=False)
    if len(rows) > 1:
        return DriverLookup(found=False, error="password_query returned multiple rows")
    lowered = [c.lower() for c in columns]
    if "password" not in lowered and "password_noscheme" not in lowered:
        return DriverLookup(found=False, error="password_query must return a column named 'password'")
    password: str | None = None
    items: list[tuple[str, str]] = []
    username = domain = None
    for name, value in zip(lowered, rows[0], strict=True):
        if value is None:
            continue
        text = text_value(value)
        if name == "password":
            password = text
        elif name == "password_noscheme":
            password = f"{{{default_scheme}}}{text}"
        elif name == "username":
            username = text
        elif name == "domain":
            domain = text
        else:
            items.append((name, text))
    if username is not None or domain is not None:
        old_name, _, old_domain = user.partition("@")
        name_part = username if username is not None else old_name
        if "@" not in name_part:
            dom = domain if domain is not None else old_domain
            name_part = f"{name_part}@{dom}" if dom else name_part
        if not any(k == "user" for k, _ in items):
            items.append(("user", name_part))
    literal = [(k, v.replace("%", "%%")) for k, v in items]  # database values are not templates
    return DriverLookup(found=True, password=password, fields=compile_fields(literal))


@dataclass(frozen=True)
class PgConnect:
    """A libpq-style ``connect`` string, as asyncpg's keyword arguments."""

    hosts: tuple[str, ...]
    kwargs: dict[str, Any] = field(repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    maxconns: int = DEFAULT_MAXCONNS

    @classmethod
    def parse(cls, text: str, source: str) -> PgConnect:
        hosts: list[str] = []
        kwargs: dict[str, Any] = {}
        timeout, maxconns = DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAXCONNS
        for key, value in _libpq_pairs(text, source):
            if key not in _PG_KEYS:
                raise SqlArgsError(f"{source}: connect: unsupported key {key!r} "
                                   f"(supported: {', '.join(sorted(_PG_KEYS))})")
            if key == "host":
                hosts.append(value)
            elif key in ("port", "maxconns", "connect_timeout"):
                if not value.isdigit() or int(value) == 0:
                    raise SqlArgsError(f"{source}: connect: {key} must be a positive number")
                if key == "port":
                    kwargs["port"] = int(value)
                elif key == "maxconns":
                    maxconns = int(value)
                else:
                    timeout = float(value)
            elif key == "dbname":
                kwargs["database"] = value
            elif key == "sslmode":
                if value not in _SSLMODES:
                    raise SqlArgsError(f"{source}: connect: sslmode must be one of {', '.join(sorted(_SSLMODES))}")
                kwargs["ssl"] = value
            elif key == "application_name":
                kwargs.setdefault("server_settings", {})["application_name"] = value
            else:
                kwargs[key] = value
        return cls(tuple(hosts) or ("localhost",), kwargs, timeout, maxconns)


def _libpq_pairs(text: str, source: str) -> list[tuple[str, str]]:
    """``key=value`` pairs; a value may be single-quoted with ``\\'`` and ``\\\\`` escapes (libpq)."""
    pairs: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return pairs
        eq = text.find("=", i)
        if eq < 0:
            raise SqlArgsError(f"{source}: connect: expected key=value")
        key = text[i:eq].strip()
        i = eq + 1
        while i < n and text[i] == " ":
            i += 1
        value: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while i < n and text[i] != "'":
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                value.append(text[i])
                i += 1
            if i >= n:
                raise SqlArgsError(f"{source}: connect: unterminated quoted value")
            i += 1
        else:
            while i < n and not text[i].isspace():
                value.append(text[i])
                i += 1
        pairs.append((key, "".join(value)))


class PgsqlDriver:
    """``driver = pgsql``: asyncpg on the event loop; the pool is made in the loop that first uses it."""

    def __init__(self, conf: SqlConf, source: str) -> None:
        self.conf = conf
        self.default_scheme = conf.default_pass_scheme
        self.connect = PgConnect.parse(conf.connect, source)
        self._pool: Any = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"PgsqlDriver(hosts={self.connect.hosts})"

    def cache_key(self, values: Mapping[str, str]) -> str:
        return cache_key(self.conf.password_query, values)

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        raise RuntimeError("the pgsql passdb is asynchronous: use lookup_async")

    async def _get_pool(self) -> Any:
        import asyncpg

        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            if self._pool is not None:
                self._pool.terminate()  # made in another (finished) loop
            hosts = list(self.connect.hosts)
            self._pool = asyncpg.create_pool(
                host=hosts if len(hosts) > 1 else hosts[0], min_size=0, max_size=self.connect.maxconns,
                timeout=self.connect.connect_timeout, command_timeout=QUERY_TIMEOUT,
                statement_cache_size=0, max_inactive_connection_lifetime=60.0, **self.connect.kwargs)
            self._pool_loop = loop
            await self._pool  # with min_size=0 this opens no connection
        return self._pool

    async def lookup_async(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        import asyncpg

        query = render_query(self.conf, values)
        if query is None:
            return DriverLookup(found=False)
        try:
            pool = await self._get_pool()
            async with asyncio.timeout(self.connect.connect_timeout + QUERY_TIMEOUT), pool.acquire() as conn:
                records = await conn.fetch(query, timeout=QUERY_TIMEOUT)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            return DriverLookup(found=False, error=f"pgsql: {_describe(exc)}")
        if not records:
            return DriverLookup(found=False)
        return rows_to_lookup(list(records[0].keys()), [tuple(r.values()) for r in records], user=user,
                              default_scheme=self.default_scheme)

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), QUERY_TIMEOUT)
            except (TimeoutError, OSError):
                pool.terminate()


def _describe(exc: BaseException) -> str:
    """What went wrong, without the query text (it may carry a user's password through %w)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or type(exc).__name__}"
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}" + (f" (SQLSTATE {sqlstate})" if sqlstate else "")


class SqliteDriver:
    """``driver = sqlite``: ``connect`` is the database file, opened read-only, queried in a thread."""

    def __init__(self, conf: SqlConf) -> None:
        self.conf = conf
        self.default_scheme = conf.default_pass_scheme
        self.path = conf.connect.strip()
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"SqliteDriver({self.path!r})"

    def cache_key(self, values: Mapping[str, str]) -> str:
        return cache_key(self.conf.password_query, values)

    def lookup(self, user: str, values: Mapping[str, str]) -> DriverLookup:
        query = render_query(self.conf, values)
        if query is None:
            return DriverLookup(found=False)
        with self._lock:
            try:
                if self._db is None:
                    self._db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                               timeout=QUERY_TIMEOUT, check_same_thread=False)
                cursor = self._db.execute(query)
                rows = cursor.fetchmany(2)
                columns = [d[0] for d in cursor.description or ()]
            except sqlite3.Error as exc:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                code = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
                return DriverLookup(found=False, error=f"sqlite {self.path}: {code}")
        return rows_to_lookup(columns, rows, user=user, default_scheme=self.default_scheme)


def make_sql_driver(args: str) -> PgsqlDriver | SqliteDriver:
    """``passdb { driver = sql  args = /etc/dovecot/dovecot-sql.conf.ext }``."""
    path = args.strip()
    if not path:
        raise SqlArgsError("sql: args must name the dovecot-sql.conf.ext file")
    conf = read_sql_conf(path)
    if conf.driver == "pgsql":
        return PgsqlDriver(conf, path)
    return SqliteDriver(conf)
