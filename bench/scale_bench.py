"""A million users (issue 15): logins at a steady rate through a real cluster, for each passdb kind,
while a password changes and the stats tasks run; and the Cassandra GeoDB with a million users.

One cluster (`LocalCluster`: HAProxy, two `palomar proxy` processes, one `palomar backend` with its
Dovecot CE, SQLite GeoDB). The GeoDB gets `--users` users, each placed in its default group (the
state after their first login), written with `GeoDB.users_put_many`, the path of
`palomar cluster user import`. Then, for each passdb kind, the same `--users` users are put in that
user database and the proxies are restarted with it:

* `passwd-file`: a file of `--users` lines (`{PLAIN}` passwords: the bench measures the lookup,
  not the hash);
* `sql-sqlite`: a SQLite table, `driver = sqlite`;
* `sql-pgsql`: a PostgreSQL table (Debian's PostgreSQL, `devcluster/userdb_servers.py`);
* `ldap`: OpenLDAP slapd, entries loaded with `slapadd`, `pass_attrs` password lookups over ldaps.

For `--seconds`, an open-loop client starts `--rate` IMAP logins per second (LOGIN, LOGOUT) of
random users through HAProxy, so a stall shows as late answers, not as fewer requests. A third
of the way in, one user's password is changed in the database (the passwd-file replaced by
`rename`) and the bench records when the new password first works. The proxies and the backend
write their stats every 5 s throughout. Reported per kind: time from proxy start to its
listeners, the latency median, p99 and max, the slowest login minus the median, logins more than
100 ms above the median ("stalls"), failures, and each proxy's PSS after the run.

With `--cassandra`, a Cassandra GeoDB (a single node of `scripts/cassandra`) gets `--cassandra-users`
users (`users_put_many`, the import path) and the proxy's `Router.route()` is measured cold (every
cache entry expired: six GeoDB reads) and LocalDB-warm. The node is the one answering on
127.0.0.1:9042 if there is one (its keyspace `palomar_scale_bench` is dropped first), else one
started in the run's work directory and stopped at the end. `--private-network` (root) runs that
part in a network namespace of its own, so the run always starts its own node on that namespace's
loopback and neither uses nor blocks the fixed ports of a Cassandra on the machine.

Results replace the `## A million users (scale_bench.py)` section of docs/benchmarks.md.

    .venv/bin/python bench/scale_bench.py                                  # 1M users, 3 min per kind
    .venv/bin/python bench/scale_bench.py --users 100000 --seconds 60 --kinds passwd-file,sql-sqlite
    .venv/bin/python bench/scale_bench.py --kinds '' --cassandra
    sudo .venv/bin/python bench/scale_bench.py --kinds '' --cassandra --private-network --out /tmp/b.md
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import geodb_bench
from palomar.cluster.hashing import default_group_name
from palomar.cluster.model import Group
from palomar.devcluster.cassandra import LocalCassandra, reset_keyspace
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.userdb_servers import PostgresServer, SlapdServer
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from private_network import private_network
from proctree import tree_memory
from report import load_average, log, machine_rows, median, percentile, table, write_section

HEADING = "A million users (scale_bench.py)"
KINDS = ("passwd-file", "sql-sqlite", "sql-pgsql", "ldap")
PG_HOST, LDAP_HOST = "127.0.0.56", "127.0.0.57"
SUFFIX = "dc=example,dc=test"
GROUPS = 100
STALL_MS = 100.0
CHANGED_USER = 0
NEW_PASSWORD = "pw-changed"
AFTER_CHANGE = 10.0
KEYSPACE = "palomar_scale_bench"


def username(i: int) -> str:
    return f"user{i}@example.test"


def password(i: int) -> str:
    return f"pw-{i}"


def _chunks(count: int, size: int = 100_000) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


# -- user databases ---------------------------------------------------------------------------


@dataclass
class UserDB:
    """One passdb kind, filled: the `passdb users { }` lines and how to change one password."""

    kind: str
    passdb: tuple[str, ...]
    change_password: Callable[[int, str], None]
    fill_seconds: float
    stop: Callable[[], None] = lambda: None


def passwd_file_db(work: Path, users: int) -> UserDB:
    path = work / "users.passwd"

    def write(target: Path, changed: dict[int, str]) -> None:
        with open(target, "w") as fh:
            for chunk in _chunks(users):
                fh.write("".join(f"{username(i)}:{{PLAIN}}{changed.get(i, password(i))}\n" for i in chunk))

    started = time.monotonic()
    write(path, {})
    seconds = time.monotonic() - started

    def change(i: int, new: str) -> None:
        # sed, not Python: rewriting a million lines in the client would stall its own event loop
        with open(work / "users.passwd.new", "wb") as out:
            subprocess.run(["sed", f"s/^{username(i)}:.*/{username(i)}:{{PLAIN}}{new}/", str(path)],
                           stdout=out, check=True)
        (work / "users.passwd.new").replace(path)

    return UserDB("passwd-file", ("driver = passwd-file", f"args = scheme=PLAIN {path}"), change, seconds)


SQL_QUERY = "password_query = SELECT password FROM users WHERE userid = '%u'\n"


def sqlite_db(work: Path, users: int) -> UserDB:
    path = work / "users.sqlite"
    started = time.monotonic()
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT NOT NULL)")
        con.executemany("INSERT INTO users VALUES (?, ?)",
                        ((username(i), "{PLAIN}" + password(i)) for i in range(users)))
    con.close()
    seconds = time.monotonic() - started
    conf = work / "dovecot-sqlite.conf.ext"
    conf.write_text(f"driver = sqlite\nconnect = {path}\n{SQL_QUERY}")

    def change(i: int, new: str) -> None:
        with sqlite3.connect(path) as c:
            c.execute("UPDATE users SET password = ? WHERE userid = ?", ("{PLAIN}" + new, username(i)))
        c.close()

    return UserDB("sql-sqlite", ("driver = sql", f"args = {conf}"), change, seconds)


def pgsql_db(work: Path, users: int) -> UserDB:
    pg = PostgresServer(work / "pg", host=PG_HOST).start()
    started = time.monotonic()
    pg.psql("CREATE ROLE dovecot LOGIN PASSWORD 'db-secret'")
    pg.psql("CREATE DATABASE mail")
    pg.psql("CREATE TABLE users (userid TEXT PRIMARY KEY, password TEXT NOT NULL);"
            "INSERT INTO users SELECT 'user' || g || '@example.test', '{PLAIN}pw-' || g "
            f"FROM generate_series(0, {users - 1}) g; GRANT SELECT ON users TO dovecot; ANALYZE users;", "mail")
    seconds = time.monotonic() - started
    conf = work / "dovecot-pgsql.conf.ext"
    conf.write_text(f"driver = pgsql\nconnect = {pg.connect_line('mail', 'dovecot', 'db-secret')}\n{SQL_QUERY}")

    def change(i: int, new: str) -> None:
        pg.psql(f"UPDATE users SET password = '{{PLAIN}}{new}' WHERE userid = '{username(i)}'", "mail")

    return UserDB("sql-pgsql", ("driver = sql", f"args = {conf}"), change, seconds, pg.destroy)


def ldap_db(work: Path, users: int) -> UserDB:
    slapd = SlapdServer(work / "ldap", suffix=SUFFIX, host=LDAP_HOST, maxsize=max(16 << 20, users * 4096))
    started = time.monotonic()
    ldif = "".join(
        f"dn: uid={username(i)},ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: {username(i)}\n"
        f"cn: u{i}\nsn: u\nuserPassword: {{PLAIN}}{password(i)}\n\n" for i in range(users))
    slapd.init(ldif).start()
    seconds = time.monotonic() - started
    conf = work / "dovecot-ldap.conf.ext"
    conf.write_text(f"uris = {slapd.ldaps_uri}\ntls_ca_cert_file = {slapd.ca_file}\n"
                    f"dn = {slapd.admin_dn}\ndnpass = {slapd.admin_password}\nbase = ou=people,{SUFFIX}\n"
                    "pass_attrs = userPassword=password\npass_filter = (&(objectClass=inetOrgPerson)(uid=%u))\n")

    def change(i: int, new: str) -> None:
        change_ldif = (f"dn: uid={username(i)},ou=people,{SUFFIX}\nchangetype: modify\n"
                       f"replace: userPassword\nuserPassword: {{PLAIN}}{new}\n")
        subprocess.run(["ldapmodify", "-x", "-H", slapd.uri, "-D", slapd.admin_dn, "-w", slapd.admin_password],
                       input=change_ldif, text=True, check=True, capture_output=True)

    return UserDB("ldap", ("driver = ldap", f"args = {conf}"), change, seconds, slapd.destroy)


MAKERS = {"passwd-file": passwd_file_db, "sql-sqlite": sqlite_db, "sql-pgsql": pgsql_db, "ldap": ldap_db}


# -- load -------------------------------------------------------------------------------------


async def imap_login(host: str, port: int, user: str, secret: str, timeout: float = 30.0,
                     source: str | None = None) -> str:
    """LOGIN and LOGOUT on a plain connection; the tagged answer to LOGIN ("a OK ..." on success)."""
    local = None if source is None else (source, 0)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), timeout)
    try:
        await asyncio.wait_for(reader.readline(), timeout)
        writer.write(f'a LOGIN "{user}" "{secret}"\r\n'.encode())
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line or line.startswith(b"a "):
                break
        writer.write(b"b LOGOUT\r\n")
        await writer.drain()
        return line.decode(errors="replace").strip() or "connection closed"
    finally:
        writer.close()
        await asyncio.gather(writer.wait_closed(), return_exceptions=True)


@dataclass
class Run:
    kind: str
    users: int
    fill_seconds: float
    start_seconds: float
    first_login_ms: float
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    change_visible_seconds: float | None = None
    pss_mib: list[float] = field(default_factory=list)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    started_at: list[float] = field(default_factory=list)
    """When each login of `latencies` began (seconds into the run)."""
    changed_at: float | None = None

    def row(self) -> list[object]:
        p50 = median(self.latencies) * 1000
        worst = max(self.latencies, default=0.0) * 1000
        stalls = sum(1 for x in self.latencies if x * 1000 > p50 + STALL_MS)
        change = "-" if self.change_visible_seconds is None else f"{self.change_visible_seconds:.2f} s"
        after = [x for x, t in zip(self.latencies, self.started_at, strict=True)
                 if self.changed_at is not None and self.changed_at <= t < self.changed_at + AFTER_CHANGE]
        return [self.kind, f"{self.users:,}", f"{self.fill_seconds:.0f} s", f"{self.start_seconds:.1f} s",
                f"{self.first_login_ms:.0f}", len(self.latencies), f"{p50:.1f}",
                f"{percentile(self.latencies, 99) * 1000:.1f}", f"{worst:.0f}", f"{worst - p50:.0f}", f"{max(after, default=0.0) * 1000:.0f}", stalls,
                self.failures, change, " / ".join(f"{m:.0f}" for m in self.pss_mib)]


async def steady_logins(cluster: LocalCluster, run: Run, users: int, rate: float, seconds: float,
                        change: Callable[[int, str], None]) -> None:
    rng = random.Random(15)
    host, port = cluster.lb_host, cluster.lb_imap
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks: list[asyncio.Task[None]] = []

    async def one(i: int) -> None:
        user = rng.randrange(1, users)  # user 0 is the one whose password changes
        began = loop.time()
        try:
            answer = await imap_login(host, port, username(user), password(user))
        except (TimeoutError, OSError) as exc:
            answer = type(exc).__name__
        if answer.startswith("a OK"):
            run.latencies.append(loop.time() - began)
            run.started_at.append(began - start)
        else:
            run.failures += 1
            run.failure_reasons[answer] = run.failure_reasons.get(answer, 0) + 1

    async def password_change() -> None:
        await asyncio.sleep(seconds / 3)
        changed = loop.time()
        run.changed_at = changed - start
        await asyncio.to_thread(change, CHANGED_USER, NEW_PASSWORD)
        attempt = 0
        while loop.time() - changed < 60:
            # each try from an address of its own: a failure (old password still served) must not
            # put the auth penalty on the steady logins' address, nor delay the next try
            attempt += 1
            try:
                answer = await imap_login(host, port, username(CHANGED_USER), NEW_PASSWORD,
                                          source=f"127.0.1.{attempt % 250 + 1}")
            except (TimeoutError, OSError) as exc:
                answer = type(exc).__name__
            if answer.startswith("a OK"):
                run.change_visible_seconds = loop.time() - changed
                return
            await asyncio.sleep(0.1)

    changer = asyncio.create_task(password_change())
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    await changer


def timed_login(cluster: LocalCluster, user: int) -> float:
    """The first login on a freshly started proxy, straight to its own IMAP port (HAProxy may not
    have seen it come back yet)."""
    node = cluster.proxies[0]
    began = time.monotonic()
    answer = asyncio.run(imap_login(node.host, node.imap, username(user), password(user)))
    if not answer.startswith("a OK"):
        raise RuntimeError(f"first login of {username(user)}: {answer}")
    return (time.monotonic() - began) * 1000


def bench_kind(cluster: LocalCluster, db: UserDB, args: argparse.Namespace) -> Run:
    cluster.users_passdb = db.passdb
    started = time.monotonic()
    for node in cluster.proxies:
        node.config.write_text(cluster._proxy_config(node))
        cluster.restart_proxy(node)
    start_seconds = (time.monotonic() - started) / len(cluster.proxies)
    run = Run(db.kind, args.users, db.fill_seconds, start_seconds, timed_login(cluster, args.users - 1))
    log(f"{db.kind}: proxies up in {start_seconds:.1f} s each, first login {run.first_login_ms:.0f} ms; "
        f"{args.rate:g} logins/s for {args.seconds:g} s")
    asyncio.run(steady_logins(cluster, run, args.users, args.rate, args.seconds, db.change_password))
    for node in cluster.proxies:
        assert node.proc is not None
        run.pss_mib.append(tree_memory(node.proc.pid).pss_kib / 1024)
    log(f"{db.kind}: p50 {median(run.latencies) * 1000:.1f} ms, max {max(run.latencies, default=0) * 1000:.0f} ms, "
        f"{run.failures} failures {run.failure_reasons}, PSS {run.pss_mib}")
    return run


async def fill_geodb(path: Path, users: int) -> float:
    """Every user in its default group (each group on the backend), in batches, as
    `palomar cluster user import` writes them."""
    engine = open_engine("sqlite", path=str(path))
    await engine.open()
    started = time.monotonic()
    try:
        db = GeoDB(engine)
        (site,), (backend,) = await db.site_list(), await db.backend_list_all()
        for g in range(1, GROUPS + 1):
            await db.group_create_if_absent(Group(site.id, f"default-{g}", backend_id=backend.id))
        for chunk in _chunks(users, 5_000):
            await db.users_put_many([(username(i), {"group_name": default_group_name(username(i), GROUPS)})
                                     for i in chunk])
    finally:
        await engine.close()
    return time.monotonic() - started


# -- Cassandra --------------------------------------------------------------------------------


async def cassandra_lookups(args: argparse.Namespace, work: Path) -> tuple[float, list[geodb_bench.Result]]:
    await asyncio.to_thread(reset_keyspace, "127.0.0.1", KEYSPACE, local_dc="dc1")
    engine = open_engine("cassandra", hosts="127.0.0.1", keyspace=KEYSPACE, local_dc="dc1", replication={"dc1": 1})
    bench_args = argparse.Namespace(users=args.cassandra_users, groups=GROUPS, backends=3, cold_lookups=3_000,
                                    warm_lookups=20_000, concurrency=16, warm_sample=20_000)
    started = time.monotonic()
    results = await geodb_bench.bench_engine("cassandra", engine, bench_args, work)
    return time.monotonic() - started, results


# -- report -----------------------------------------------------------------------------------


def report(runs: list[Run], cassandra: tuple[float, list[geodb_bench.Result]] | None, geodb_fill: float,
           args: argparse.Namespace, loads: tuple[str, str]) -> str:
    parts = [f"Written by `bench/scale_bench.py {' '.join(args.argv)}`."]
    if runs:
        parts.append(
            f"One cluster on loopback: HAProxy, 2 `palomar proxy`, 1 `palomar backend` with Dovecot CE, a SQLite "
            f"GeoDB holding {args.users:,} users in their default groups (written in {geodb_fill:.0f} s with "
            f"`users_put_many`, {args.users / max(geodb_fill, 1e-9):,.0f} users/s). For each passdb kind the same "
            f"{args.users:,} users (`{{PLAIN}}` passwords: the lookup is measured, not the hash), then "
            f"{args.rate:g} IMAP logins/s (LOGIN, LOGOUT) of random users through HAProxy for {args.seconds:g} s, "
            "open loop; a third of the way in one password is changed in the database (the passwd-file is "
            "replaced by `rename`), and the proxies and the backend write their stats every 5 s. "
            f"\"stalls\": logins more than {STALL_MS:.0f} ms above the median. \"fill\": loading the user "
            "database; \"start\": a proxy restart until its listeners answer (a passwd-file is indexed before); "
            "\"first\": the first login after that, ms. Latency in ms. PSS per proxy process (MiB) after the run.")
        parts.append(table(
            ["passdb", "users", "fill", "start", "first", "logins", "p50", "p99", "max", "max − p50",
             f"max, {AFTER_CHANGE:.0f} s after the change", "stalls",
             "failed", "new password works after", "PSS per proxy"],
            [r.row() for r in runs]))
    if cassandra is not None:
        seconds, results = cassandra
        where = ("started for the run in its work directory" if args.cassandra_started
                 else "the one already answering on 127.0.0.1:9042")
        if args.private_network:
            where += ", in a network namespace of the run's own"
        parts.append(
            f"Cassandra GeoDB (a single node of `scripts/cassandra`, {where}; `local-one` reads): "
            f"{args.cassandra_users:,} users written (with 100 groups, 3 backends) and measured in {seconds:.0f} s; "
            "`Router.route(user)` for random users, **cold** (every LocalDB cache entry expired: four GeoDB "
            "reads) and **LocalDB-warm** (a sample of 20,000 users routed once, then routed again from the cache).")
        parts.append(table(["engine", "mode", "concurrency", "lookups", "p50 ms", "p99 ms", "lookups/s"],
                           [r.row() for r in results]))
    parts.append(table(["", ""], [*machine_rows(), ("load average before / after", " / ".join(loads))]))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--rate", type=float, default=20.0, help="logins per second")
    parser.add_argument("--seconds", type=float, default=180.0, help="seconds of logins per passdb kind")
    parser.add_argument("--cassandra", action="store_true",
                        help="also the Cassandra GeoDB (take the lock, or use --private-network)")
    parser.add_argument("--private-network", action="store_true",
                        help="run the Cassandra part in a network namespace of its own (root): its own node, "
                             "whatever Cassandra the machine runs")
    parser.add_argument("--cassandra-users", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) for inspection")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    args.cassandra_started = False
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - set(KINDS):
        parser.error(f"--kinds takes {', '.join(KINDS)}")
    loads = [load_average()]
    work = Path(tempfile.mkdtemp(prefix="palomar-scale-"))
    work.chmod(0o755)
    runs: list[Run] = []
    geodb_fill = 0.0
    cassandra = None
    try:
        if kinds:
            cluster = LocalCluster(work / "cluster", backends_count=1, proxies_count=2, users_count=2,
                                   auth_failure_delay="0", allow_cleartext=True, stats_interval="5 secs",
                                   password_scheme="PLAIN")
            cluster.start()
            try:
                geodb_fill = asyncio.run(fill_geodb(cluster.geodb_path, args.users))
                log(f"GeoDB: {args.users:,} users in {geodb_fill:.1f} s")
                for kind in kinds:
                    log(f"{kind}: filling {args.users:,} users")
                    (work / kind).mkdir()
                    try:
                        db = MAKERS[kind](work / kind, args.users)
                        try:
                            runs.append(bench_kind(cluster, db, args))
                        finally:
                            db.stop()
                    except (OSError, RuntimeError, subprocess.CalledProcessError) as exc:
                        log(f"{kind}: failed, left out of the report: {exc!r}")
                    write_section(args.out, HEADING, report(runs, None, geodb_fill, args, (loads[0], load_average())))
            finally:
                cluster.stop()
        if args.cassandra:
            with private_network() if args.private_network else contextlib.nullcontext():
                node = LocalCassandra(work / "cassandra")
                try:
                    args.cassandra_started = node.start()
                    cassandra = asyncio.run(cassandra_lookups(args, work))
                finally:
                    node.stop()
    finally:
        loads.append(load_average())
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    write_section(args.out, HEADING, report(runs, cassandra, geodb_fill, args, (loads[0], loads[1])))
    log(f"wrote the '{HEADING}' section of {args.out}")


if __name__ == "__main__":
    main()
