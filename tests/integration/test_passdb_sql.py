"""The sql passdb against a real PostgreSQL (started here, stopped mid-run) and a real SQLite file."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from passdb_users import BY_NAME, PASSWORD_QUERY, SCHEME_USERS, login, sql_rows, wait_for_status

from palomar.auth.cache import AuthCache
from palomar.auth.passdb import Passdb, PassdbChain
from palomar.devcluster.userdb_servers import PostgresServer

PG_HOST = "127.0.0.44"
DB_USER, DB_PASSWORD = "dovecot", "dovecot-db-secret"


@pytest.fixture(scope="module")
def pg(harness_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(harness_root / "passdb-pg", host=PG_HOST).start()
    try:
        server.psql(f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'")
        server.psql("CREATE DATABASE mail")
        server.psql(sql_rows() + f"GRANT SELECT ON users TO {DB_USER};", database="mail")
        yield server
    finally:
        server.destroy()


def write_conf(path: Path, driver: str, connect: str, query: str = PASSWORD_QUERY) -> Path:
    path.write_text(f"# as in /etc/dovecot/dovecot-sql.conf.ext\ndriver = {driver}\nconnect = {connect}\n"
                    f"default_pass_scheme = MD5-CRYPT\npassword_query = {query}\n"
                    "user_query = SELECT home FROM users WHERE userid = '%u'\n")
    return path


def chain_for(conf: Path, cache: AuthCache | None = None, username_chars: str | None = None) -> PassdbChain:
    item = SimpleNamespace(name="sql", driver="sql", args=str(conf))
    extra = {} if username_chars is None else {"username_chars": username_chars}
    return PassdbChain([Passdb.from_settings(item)], cache=cache, **extra)


@pytest.fixture
async def pg_chain(pg: PostgresServer, tmp_path: Path) -> AsyncIterator[PassdbChain]:
    chain = chain_for(write_conf(tmp_path / "sql.conf.ext", "pgsql",
                                 pg.connect_line("mail", DB_USER, DB_PASSWORD) + " connect_timeout=2"))
    yield chain
    await chain.aclose()


@pytest.fixture
def sqlite_conf(tmp_path: Path) -> Path:
    db = tmp_path / "users.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(sql_rows())
    conn.close()
    return write_conf(tmp_path / "sqlite.conf.ext", "sqlite", str(db))



# --- PostgreSQL -------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", SCHEME_USERS, ids=lambda u: u.scheme)
async def test_pgsql_users_of_every_scheme_log_in_and_a_wrong_password_fails(pg_chain: PassdbChain, user) -> None:
    ok = await login(pg_chain, user.name, user.password)
    assert ok.status == "ok" and ok.user == user.name, ok
    bad = await login(pg_chain, user.name, user.password + "x")
    assert bad.status == "failed", bad


async def test_pgsql_extra_columns_are_fields_and_null_columns_are_not(pg_chain: PassdbChain) -> None:
    pinned = await login(pg_chain, "pinned@example.test", "pw-pinned")
    assert pinned.status == "ok"
    assert pinned.fields == {"host": "127.0.0.3"}  # nologin and reason are NULL: not set
    off = await login(pg_chain, "off@example.test", "pw-off")
    assert off.status == "nologin" and off.reason == "Moved to the new server."
    looked_up = await pg_chain.lookup("pinned@example.test")
    assert looked_up.status == "ok" and looked_up.fields["host"] == "127.0.0.3"


async def test_pgsql_unknown_user_and_a_quote_in_the_name_cannot_change_the_query(
        pg: PostgresServer, tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "sql.conf.ext", "pgsql", pg.connect_line("mail", DB_USER, DB_PASSWORD))
    chain = chain_for(conf, username_chars="")  # let any character through to the query
    try:
        assert (await login(chain, "nobody@example.test", "x")).status == "unknown_user"
        injected = await login(chain, "x' OR userid LIKE '%", "pw-plain")
        assert injected.status == "unknown_user", injected
    finally:
        await chain.aclose()


async def test_pgsql_query_errors_are_temporary_failures(pg: PostgresServer, tmp_path: Path) -> None:
    connect = pg.connect_line("mail", DB_USER, DB_PASSWORD)
    cases = {
        "two rows": "SELECT userid AS user, password FROM users WHERE active = 'Y' OR userid = '%u'",
        "no password column": "SELECT userid AS user FROM users WHERE userid = '%u'",
        "missing table": "SELECT password FROM no_such_table WHERE userid = '%u'",
    }
    for what, query in cases.items():
        chain = chain_for(write_conf(tmp_path / "sql.conf.ext", "pgsql", connect, query))
        try:
            result = await login(chain, "plain@example.test", "pw-plain")
        finally:
            await chain.aclose()
        assert result.status == "tempfail", what
    wrong_password = chain_for(write_conf(tmp_path / "sql.conf.ext", "pgsql",
                                          pg.connect_line("mail", DB_USER, "not-the-password")))
    try:
        assert (await login(wrong_password, "plain@example.test", "pw-plain")).status == "tempfail"
    finally:
        await wrong_password.aclose()


async def test_a_database_that_never_answers_is_a_bounded_temporary_failure(tmp_path: Path) -> None:
    listener = socket.create_server((PG_HOST, 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept and say nothing, like a hung server
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    chain = chain_for(write_conf(tmp_path / "sql.conf.ext", "pgsql",
                                 f"host={PG_HOST} port={port} dbname=mail user=x password=y connect_timeout=1"))
    try:
        result = await asyncio.wait_for(login(chain, "plain@example.test", "pw-plain"), 30)
        assert result.status == "tempfail"
        assert accepted, "the driver never reached the silent server"
    finally:
        await chain.aclose()
        stop.set()
        thread.join()
        listener.close()
        for sock in accepted:
            sock.close()


async def test_postgresql_stopped_mid_run_is_tempfail_then_works_again(pg: PostgresServer, pg_chain: PassdbChain
                                                                        ) -> None:
    assert (await login(pg_chain, "ssha@example.test", "pw-ssha")).status == "ok"  # a pooled connection
    pg.stop()
    try:
        for user in ("ssha@example.test", "nobody@example.test"):
            assert (await login(pg_chain, user, "pw-ssha")).status == "tempfail"
        assert (await pg_chain.lookup("ssha@example.test")).status == "tempfail"
    finally:
        pg.start()
    # The pooled connection died with the server: the first login after it is back already works.
    assert (await login(pg_chain, "ssha@example.test", "pw-ssha")).status == "ok"
    assert (await login(pg_chain, "ssha@example.test", "wrong")).status == "failed"


async def test_auth_cache_serves_hashes_not_verdicts(pg: PostgresServer, tmp_path: Path) -> None:
    clock = SimpleNamespace(now=1000.0)
    cache = AuthCache(1 << 20, ttl=60, negative_ttl=30, clock=lambda: clock.now)
    conf = write_conf(tmp_path / "sql.conf.ext", "pgsql", pg.connect_line("mail", DB_USER, DB_PASSWORD))
    chain = chain_for(conf, cache)
    user = BY_NAME["sha512@example.test"]
    try:
        assert (await login(chain, user.name, user.password)).status == "ok"
        assert (await login(chain, "ghost@example.test", "x")).status == "unknown_user"
        pg.stop()
        try:
            # Served from the cache while the database is down: the hash is checked every time.
            assert (await login(chain, user.name, user.password)).status == "ok"
            assert (await login(chain, user.name, "wrong")).status != "ok"
            assert (await login(chain, "ghost@example.test", "x")).status == "unknown_user"
            # Past the TTL the entry is expired, but a database failure still uses it (Dovecot's rule).
            clock.now += 120
            assert (await login(chain, user.name, user.password)).status == "ok"
            assert (await login(chain, user.name, "wrong")).status != "ok"
            assert (await login(chain, "ghost@example.test", "x")).status == "unknown_user"  # as in Dovecot
            assert (await login(chain, "plain@example.test", "pw-plain")).status == "tempfail"  # never cached
        finally:
            pg.start()
        await wait_for_status(chain, user.name, user.password, "ok")
        # A password changed in the database: the new one works at once, the old one stops working.
        pg.psql("UPDATE users SET password = '{PLAIN}changed' WHERE userid = 'sha512@example.test'", "mail")
        try:
            assert (await login(chain, user.name, "changed")).status == "ok"
            assert (await login(chain, user.name, user.password)).status == "failed"
        finally:
            pg.psql(f"UPDATE users SET password = '{user.stored}' WHERE userid = '{user.name}'", "mail")
        assert cache.hits > 0 and len(cache) >= 1
    finally:
        await chain.aclose()


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", SCHEME_USERS, ids=lambda u: u.scheme)
async def test_sqlite_users_of_every_scheme_log_in(sqlite_conf: Path, user) -> None:
    chain = chain_for(sqlite_conf)
    assert (await login(chain, user.name, user.password)).status == "ok"
    assert (await login(chain, user.name, "nope")).status == "failed"


async def test_sqlite_fields_unknown_users_and_a_missing_file(sqlite_conf: Path, tmp_path: Path) -> None:
    chain = chain_for(sqlite_conf)
    off = await login(chain, "off@example.test", "pw-off")
    assert off.status == "nologin" and off.reason == "Moved to the new server."
    assert (await login(chain, "nobody@example.test", "x")).status == "unknown_user"
    missing = chain_for(write_conf(tmp_path / "missing.conf.ext", "sqlite", str(tmp_path / "no-such.sqlite")))
    assert (await login(missing, "plain@example.test", "pw-plain")).status == "tempfail"
