"""IMAP path benchmark (issue 3): palomar against Dovecot directly and against Dovecot's own proxy.

One run starts one LocalCluster (two Dovecot CE backends, a `palomar backend` in front of
each, two `palomar proxy` processes, HAProxy) plus a Dovecot CE proxy in front of the same
backends, and measures login sessions (IMAP and IMAPS), small commands in one session, memory per
idle IDLE connection and large FETCH throughput side by side. Results go to the `## IMAP path
(issue 3)` section of docs/benchmarks.md, headed by issue 11's summary table (`summary.py`, which also
takes the LMTP figures `lmtp_bench.py` left in its own section); nothing else in that file is touched.

    .venv/bin/python bench/imap_bench.py [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dovecot_proxy import DovecotProxy, Route
from imap_client import (
    Connection,
    Credentials,
    ImapError,
    Target,
    close_idle,
    large_message,
    login_loop,
    one_session,
    open_examined,
    open_idle,
    small_command_lines,
    small_message,
    timed_commands,
    timed_fetch,
)
from nginx_proxy import NginxProxy
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.dovecot import raise_open_files_limit
from palomar.devcluster.net import free_port
from palomar.protocols.proxyproto import build_v2
from proctree import CpuMeter, TreeMemory, tcp_memory_kib, tree_memory
from report import load_average, log, machine_rows, median, percentile, table, write_section
from summary import Figures, added_latency, logins_per_core, read_figures, summary_table

HEADING = "IMAP path (issue 3)"
DOVECOT_PROXY_HOST = "127.0.0.20"
NGINX_HOST = "127.0.0.21"
LARGE_MAILBOX = "BenchLarge"
SMALL_MAILBOX = "BenchSmall"
BASELINE = {"backend_cpu": "3.5-3.9"}
PARTS = ("logins", "latency", "small", "fetch", "idle")
PROXY_WORKERS = ("service imap-login {", f"  process_limit = {os.cpu_count() or 1}", "}")
"""Each palomar proxy runs a worker per core, as Dovecot's proxy and nginx run several processes."""
LATENCY_PATHS = ("direct", "palomar", "dovecot", "nginx")


@dataclass(frozen=True)
class Plan:
    """How much of everything one run does."""

    name: str
    reps: int
    seconds_c50: float
    seconds_c1: float
    max_sessions: int
    idle_sessions: int
    idle_hold: float
    fetch_size: int
    fetch_repeats: int
    users: int = 200
    small_commands: int = 1000
    """Per session, as the issue has it; CPU ticks are 10 ms, so `small_sessions` sessions are pooled."""
    small_sessions: int = 5
    small_messages: int = 10
    latency_rounds: int = 300
    """Rounds of one session per path in turn, for the added latency (interleaved, so load bursts hit all)."""


FULL = Plan("full", reps=3, seconds_c50=15, seconds_c1=6, max_sessions=20000, idle_sessions=2000, idle_hold=5,
            fetch_size=20 * 1024 * 1024, fetch_repeats=8)
QUICK = Plan("quick", reps=1, seconds_c50=4, seconds_c1=2, max_sessions=5000, idle_sessions=500, idle_hold=1,
             fetch_size=20 * 1024 * 1024, fetch_repeats=4, latency_rounds=150)


# --- the world under test -------------------------------------------------------------------------


@dataclass
class World:
    cluster: LocalCluster
    dproxy: DovecotProxy
    nginx: NginxProxy
    backend_host: str
    """The backend every benchmarked user lives on (all paths end in this one Dovecot)."""
    users: list[Credentials]
    targets: dict[str, Target] = field(default_factory=dict)

    def backend_node(self):
        return next(b for b in self.cluster.backends if b.host == self.backend_host)

    def trees(self) -> dict[str, list[int]]:
        """Every server process tree, by the role the tables report."""
        c = self.cluster
        assert c.haproxy is not None and c.haproxy.pid is not None
        return {
            "palomar proxy": [p.proc.pid for p in c.proxies if p.proc is not None],
            "palomar backend": [b.proc.pid for b in c.backends if b.proc is not None],
            "haproxy": [c.haproxy.pid],
            "dovecot proxy": [self.dproxy.pid],
            "nginx": [self.nginx.pid],
            "dovecot backends": [b.dovecot.pid for b in c.backends if b.dovecot.pid is not None],
        }


def make_world(root: Path, plan: Plan, backend_path: str = "hop") -> World:
    """The servers, configured but not started (so a failed start can still stop what did start)."""
    cluster = LocalCluster(root / "cluster", users_count=plan.users, allow_cleartext=True, password_scheme="PLAIN",
                           auth_failure_delay="0 secs", backend_path=backend_path,
                           proxy_settings={"*": PROXY_WORKERS})
    tls = (cluster.root / "tls" / "localhost.crt", cluster.root / "tls" / "localhost.key")  # made by cluster.start()
    return World(cluster, DovecotProxy(root / "dovecot-proxy", DOVECOT_PROXY_HOST, free_port(DOVECOT_PROXY_HOST),
                                       [], imaps_port=free_port(DOVECOT_PROXY_HOST), tls=tls),
                 NginxProxy(root / "nginx", NGINX_HOST, free_port(NGINX_HOST), free_port(NGINX_HOST), tls, []), "", [])


def start_world(world: World) -> None:
    cluster = world.cluster
    log("starting the cluster (Dovecot backends, palomar backends and proxies, HAProxy)")
    cluster.start()
    proxy1 = cluster.proxies[0]
    everyone = [Credentials(u.name, u.password) for u in cluster.users]
    log(f"first login of {len(everyone)} users through palomar (assigns their groups)")
    asyncio.run(first_logins(Target("warm-up", proxy1.host, proxy1.imap), everyone))
    placement = user_backends(cluster)
    missing = [u.user for u in everyone if u.user not in placement]
    if missing:
        raise RuntimeError(f"no backend in the GeoDB after a first login for {len(missing)} users, e.g. {missing[0]}")
    counts = Counter(placement.values())
    world.backend_host = counts.most_common(1)[0][0]
    world.users = [u for u in everyone if placement.get(u.user) == world.backend_host]
    log(f"users per backend: {dict(counts)}; benchmarking the {len(world.users)} users on {world.backend_host}")
    backends = {b.host: b.dovecot.params for b in cluster.backends}
    world.dproxy.routes = [
        Route(u.name, u.password, placement[u.name], backends[placement[u.name]].imap_port,
              backends[placement[u.name]].master_user, backends[placement[u.name]].master_password)
        for u in cluster.users
    ]
    log("starting the Dovecot CE proxy and nginx")
    world.dproxy.start()
    world.nginx.routes = world.dproxy.routes
    world.nginx.start()
    params = world.backend_node().dovecot.params
    world.targets = {
        "direct": Target(f"Dovecot {world.backend_node().name} direct", params.listen, params.imap_port,
                         params.master_user, params.master_password),
        "palomar": Target("palomar proxy", proxy1.host, proxy1.imap),
        "haproxy": Target("HAProxy → palomar proxies", cluster.lb_host, cluster.lb_imap),
        "dovecot": Target("Dovecot CE proxy", DOVECOT_PROXY_HOST, world.dproxy.port),
        "palomar-tls": Target("palomar proxy, IMAPS", proxy1.host, proxy1.imaps, tls=True),
        "dovecot-tls": Target("Dovecot CE proxy, IMAPS", DOVECOT_PROXY_HOST, world.dproxy.imaps_port, tls=True),
        "nginx": Target("nginx mail proxy", NGINX_HOST, world.nginx.port),
        "nginx-tls": Target("nginx mail proxy, IMAPS", NGINX_HOST, world.nginx.imaps_port, tls=True),
    }
    if params.haproxy_imap_port and params.haproxy_tls is not None:  # direct path with TLS: Dovecot's own TLS
        host = params.haproxy_listen or params.listen
        world.targets["direct-tls"] = Target(
            f"Dovecot {world.backend_node().name} direct, TLS (haproxy listener)", host, params.haproxy_imap_port,
            params.master_user, params.master_password, tls=True,
            proxy_header=build_v2(("127.0.0.1", 40000), (host, params.haproxy_imap_port)))


async def first_logins(target: Target, users: list[Credentials]) -> None:
    """One session per user, 10 at a time; any failure stops the benchmark."""
    gate = asyncio.Semaphore(10)

    async def one(creds: Credentials) -> None:
        async with gate, asyncio.timeout(30):
            await one_session(target, creds)

    await asyncio.gather(*(one(u) for u in users))


def user_backends(cluster: LocalCluster) -> dict[str, str]:
    """user -> backend host, as the GeoDB has them after the users' first logins."""
    users = json.loads(cluster.cluster("--json", "user", "list").stdout)
    groups = {g["name"]: g["backend"] for g in json.loads(cluster.cluster("--json", "group", "list").stdout)}
    return {u["username"]: groups[u["group"]] for u in users if groups.get(u["group"])}


# --- 1. login sessions ------------------------------------------------------------------------------


@dataclass
class LoginRuns:
    target: str
    concurrency: int
    rates: list[float] = field(default_factory=list)
    sessions: int = 0
    errors: int = 0
    session_ms: list[float] = field(default_factory=list)
    login_ms: list[float] = field(default_factory=list)
    cpu: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)

    def ms_per_login(self, role: str) -> float:
        return self.cpu[role] * 1000 / self.sessions if self.sessions else 0.0


async def measure_logins(world: World, plan: Plan) -> list[LoginRuns]:
    runs: dict[tuple[str, int], LoginRuns] = {}
    for rep in range(1, plan.reps + 1):
        for key in ("direct", "palomar", "haproxy", "dovecot", "nginx", "palomar-tls", "dovecot-tls", "nginx-tls"):
            target = world.targets[key]
            # IMAPS at 50 concurrent only: its row of the issue is CPU per login
            for concurrency, seconds in ((50, plan.seconds_c50), (1, plan.seconds_c1))[:1 if target.tls else 2]:
                meter = CpuMeter(world.trees()).start()
                own = os.times()
                result = await login_loop(target, world.users, concurrency=concurrency, duration=seconds,
                                          max_sessions=plan.max_sessions)
                own_after = os.times()
                spent = meter.stop()
                spent["loadgen"] = (own_after.user - own.user) + (own_after.system - own.system)
                entry = runs.setdefault((key, concurrency), LoginRuns(key, concurrency))
                entry.rates.append(result.rate)
                entry.sessions += result.sessions
                entry.errors += result.errors
                entry.session_ms += result.session_ms
                entry.login_ms += result.login_ms
                entry.cpu.update(spent)
                entry.first_errors += result.first_errors[: 3 - len(entry.first_errors)]
                log(f"rep {rep} {target.name} c={concurrency}: {result.rate:.0f} sessions/s, "
                    f"{result.errors} errors")
    return list(runs.values())


def rotated(keys: tuple[str, ...], round_: int) -> tuple[str, ...]:
    """`keys` starting at a different one each round: no path is always measured first or last."""
    shift = round_ % len(keys)
    return keys[shift:] + keys[:shift]


async def measure_latency(world: World, plan: Plan) -> dict[str, list[float]]:
    """Session milliseconds per path, one client: each round runs one session on every path, the
    order rotating from round to round, so other work on the machine hits every path alike."""
    samples: dict[str, list[float]] = {key: [] for key in LATENCY_PATHS}
    errors = 0
    for round_ in range(plan.latency_rounds):
        for key in rotated(LATENCY_PATHS, round_):
            try:
                async with asyncio.timeout(30):
                    session_s, _ = await one_session(world.targets[key], world.users[round_ % len(world.users)])
            except (OSError, ImapError, TimeoutError, asyncio.IncompleteReadError):
                errors += 1
                continue
            samples[key].append(session_s * 1000)
    log(f"latency: {plan.latency_rounds} rounds over {len(LATENCY_PATHS)} paths, {errors} errors")
    return samples


# --- 2. memory per idle connection -------------------------------------------------------------------


@dataclass
class IdleRun:
    target: str
    wanted: int
    established: int = 0
    alive: int = 0
    setup_rate: float = 0.0
    memory: dict[str, tuple[TreeMemory, TreeMemory]] = field(default_factory=dict)
    """role -> (before, during)"""
    tcp_kib: tuple[int, int] = (0, 0)
    """kernel TCP buffer memory of the whole machine (before, during), client side included"""
    first_errors: list[str] = field(default_factory=list)


def memory_of(roots: list[int]) -> TreeMemory:
    parts = [tree_memory(pid) for pid in roots]
    return TreeMemory(sum(p.processes for p in parts), sum(p.pss_kib for p in parts),
                      sum(p.rss_kib for p in parts), sum(p.sockets for p in parts))


async def hold_idle(world: World, key: str, roles: dict[str, list[int]], plan: Plan) -> IdleRun:
    """The marginal memory of `plan.idle_sessions` idle sessions: a tenth as many are opened first and
    held, so what one-off growth the first sessions cause (lazy imports, caches, arenas) is not counted."""
    run = IdleRun(key, plan.idle_sessions)
    warm = await open_idle(world.targets[key], world.users, plan.idle_sessions // 10)
    run.first_errors = warm.first_errors
    before = {role: memory_of(pids) for role, pids in roles.items()}
    tcp_before = tcp_memory_kib()
    hold = await open_idle(world.targets[key], world.users, plan.idle_sessions)
    run.established = len(hold.sessions)
    run.setup_rate = run.established / hold.setup_seconds if hold.setup_seconds else 0.0
    run.first_errors += hold.first_errors
    await asyncio.sleep(plan.idle_hold)  # the sessions sit in IDLE: that is what is being measured
    during = {role: memory_of(pids) for role, pids in roles.items()}
    run.memory = {role: (before[role], during[role]) for role in roles}
    run.tcp_kib = (tcp_before, tcp_memory_kib())
    run.alive = await close_idle(hold)
    await close_idle(warm)
    log(f"{world.targets[key].name}: {run.established}/{plan.idle_sessions} idle sessions, "
        f"{run.alive} alive after the hold")
    return run


async def measure_idle(world: World, plan: Plan) -> list[IdleRun]:
    """Plaintext and IMAPS through palomar and the Dovecot proxy, each on freshly restarted processes."""
    c = world.cluster
    proxy1 = c.proxies[0]
    runs = []
    for key in ("palomar", "palomar-tls", "dovecot", "dovecot-tls", "nginx", "nginx-tls"):
        if key.startswith("palomar"):
            log("restarting palomar proxy1 and the palomar backends (fresh heaps before measuring memory)")
            c.restart_proxy(proxy1)
            for node in c.backends:
                c.restart_backend(node)
            assert proxy1.proc is not None
            roles = {"palomar proxy": [proxy1.proc.pid],
                     "palomar backend": [b.proc.pid for b in c.backends if b.proc is not None]}
        elif key.startswith("dovecot"):
            log("restarting the Dovecot proxy")
            world.dproxy.restart()
            roles = {"dovecot proxy": [world.dproxy.pid]}
        else:
            log("restarting nginx")
            world.nginx.restart()
            roles = {"nginx": [world.nginx.pid]}
        runs.append(await hold_idle(world, key, roles, plan))
    return runs


# --- 3. small commands ------------------------------------------------------------------------------


@dataclass
class SmallRun:
    target: str
    commands: int = 0
    seconds: list[float] = field(default_factory=list)
    cpu: Counter[str] = field(default_factory=Counter)

    def us_per_command(self, role: str) -> float:
        return self.cpu[role] * 1e6 / self.commands if self.commands else 0.0


async def measure_small(world: World, plan: Plan) -> list[SmallRun]:
    """`plan.small_commands` FETCH FLAGS / FETCH HEADER one after the other in one session per target;
    CPU is read after the login and SELECT, so it is the commands' cost alone."""
    creds = world.users[0]
    log(f"appending {plan.small_messages} small messages for {creds.user}")
    await store_messages(world, creds, SMALL_MAILBOX, [small_message(i) for i in range(plan.small_messages)])
    lines = small_command_lines(plan.small_commands, plan.small_messages)
    runs: dict[str, SmallRun] = {}
    for _ in range(plan.small_sessions):
        for key in ("direct", "palomar", "dovecot", "nginx"):  # targets alternate
            target = world.targets[key]
            conn = await Connection.open(target)
            try:
                await conn.login(target, creds)
                await conn.command(f'EXAMINE "{SMALL_MAILBOX}"'.encode())
                await timed_commands(conn, lines[:20])  # warm-up: caches, buffers
                meter = CpuMeter(world.trees()).start()
                times = await timed_commands(conn, lines)
                spent = meter.stop()
                await conn.logout()
            except BaseException:
                conn.abort()
                raise
            entry = runs.setdefault(key, SmallRun(key))
            entry.commands += len(times)
            entry.seconds += times
            entry.cpu.update(spent)
            log(f"small commands via {target.name}: {len(times) / sum(times):.0f} commands/s")
    return list(runs.values())


# --- 4. large FETCH ----------------------------------------------------------------------------------


@dataclass
class FetchRun:
    target: str
    size: int
    times: list[float]
    cpu: Counter[str]

    @property
    def mb_per_s(self) -> list[float]:
        return [self.size / 1e6 / t for t in self.times]


async def store_messages(world: World, creds: Credentials, mailbox: str, messages: list[bytes]) -> None:
    """`mailbox` created afresh (directly on the backend) holding exactly `messages`."""
    conn = await Connection.open(world.targets["direct"])
    try:
        await conn.login(world.targets["direct"], creds)
        with contextlib.suppress(ImapError):  # not there yet
            await conn.command(f'DELETE "{mailbox}"'.encode())
        await conn.command(f'CREATE "{mailbox}"'.encode())
        for message in messages:
            await conn.append(mailbox, message)
        await conn.logout()
    except BaseException:
        conn.abort()
        raise


async def measure_fetch(world: World, plan: Plan) -> list[FetchRun]:
    """One connection per path, all open at once; each round fetches once on every path in rotating
    order (interleaved, so other work on the machine hits every path alike), CPU read around each fetch."""
    creds = world.users[0]
    log(f"appending a {plan.fetch_size / 1e6:.0f} MB message for {creds.user}")
    await store_messages(world, creds, LARGE_MAILBOX, [large_message(plan.fetch_size)])
    keys = ("direct", *(("direct-tls",) if "direct-tls" in world.targets else ()), "palomar", "haproxy", "dovecot",
            "nginx")
    conns: dict[str, Connection] = {}
    runs = {key: FetchRun(key, 0, [], Counter()) for key in keys}
    try:
        for key in keys:
            conns[key] = await open_examined(world.targets[key], creds, LARGE_MAILBOX)
            runs[key].size, _ = await timed_fetch(conns[key])  # warms caches
        for round_ in range(plan.fetch_repeats):
            for key in rotated(keys, round_):
                meter = CpuMeter(world.trees()).start()
                _, seconds = await timed_fetch(conns[key])
                runs[key].cpu.update(meter.stop())
                runs[key].times.append(seconds)
        for conn in conns.values():
            await conn.logout()
    except BaseException:
        for conn in conns.values():
            conn.abort()
        raise
    for run in runs.values():
        log(f"FETCH via {world.targets[run.target].name}: median {median(run.mb_per_s):.0f} MB/s")
    return list(runs.values())


# --- report -----------------------------------------------------------------------------------------


def _f(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _tier_roles(key: str) -> list[str]:
    return {"direct": [], "direct-tls": [], "palomar": ["palomar proxy", "palomar backend"],
            "haproxy": ["palomar proxy", "palomar backend"], "dovecot": ["dovecot proxy"],
            "palomar-tls": ["palomar proxy", "palomar backend"], "dovecot-tls": ["dovecot proxy"],
            "nginx": ["nginx"], "nginx-tls": ["nginx"]}[key]


def _proxy_role(key: str) -> str | None:
    """The process tree a path's client talks to (None for direct Dovecot)."""
    return {"palomar": "palomar proxy", "haproxy": "palomar proxy", "dovecot": "dovecot proxy",
            "nginx": "nginx"}.get(key.removesuffix("-tls"))


def tier_ms_per_login(r: LoginRuns) -> float:
    return sum(r.ms_per_login(role) for role in _tier_roles(r.target))


def login_table(world: World, runs: list[LoginRuns]) -> str:
    rows = []
    for r in runs:
        roles = _tier_roles(r.target)
        proxy = _proxy_role(r.target)
        tier = tier_ms_per_login(r)
        rows.append([
            world.targets[r.target].name, r.concurrency, len(r.rates),
            f"{median(r.rates):.0f} ({', '.join(f'{x:.0f}' for x in r.rates)})",
            f"{_f(percentile(r.session_ms, 50))} / {_f(percentile(r.session_ms, 99))}",
            f"{_f(percentile(r.login_ms, 50))} / {_f(percentile(r.login_ms, 99))}",
            _f(r.ms_per_login(proxy)) if proxy else "–",
            _f(r.ms_per_login("palomar backend")) if "palomar backend" in roles else "–",
            _f(tier) if roles else "–",
            _f(r.ms_per_login("haproxy")) if r.target == "haproxy" else "–",
            _f(r.ms_per_login("dovecot backends")), _f(r.ms_per_login("loadgen")), r.errors,
        ])
    return table(["target", "conc.", "runs", "sessions/s median (runs)", "session p50 / p99 ms",
                  "LOGIN p50 / p99 ms", "proxy CPU ms/login", "palomar backend CPU ms/login",
                  "proxy tier CPU ms/login", "HAProxy CPU ms/login", "Dovecot backends CPU ms/login",
                  "loadgen CPU ms/login", "errors"], rows)


def _per_session(r: IdleRun, before: float, during: float) -> float:
    return (during - before) / r.established if r.established else 0.0


def idle_pss_kib(r: IdleRun) -> float:
    """The proxy tier's PSS per held session (all its processes)."""
    return sum(_per_session(r, b.pss_kib, d.pss_kib) for b, d in r.memory.values())


def idle_table(world: World, runs: list[IdleRun]) -> str:
    rows = []
    for r in runs:
        total_before = sum(m[0].pss_kib for m in r.memory.values())
        total_during = sum(m[1].pss_kib for m in r.memory.values())
        for index, (role, (before, during)) in enumerate(r.memory.items()):
            first = index == 0
            rows.append([
                world.targets[r.target].name if first else "",
                f"{r.established} / {r.alive}" if first else "", f"{r.setup_rate:.0f}" if first else "",
                role, during.processes, _f(before.pss_kib / 1024, 1), _f(during.pss_kib / 1024, 1),
                _f(_per_session(r, before.rss_kib, during.rss_kib), 1),
                f"**{_per_session(r, before.pss_kib, during.pss_kib):.1f}**",
                _f(_per_session(r, before.sockets, during.sockets), 1),
                _f(_per_session(r, *r.tcp_kib), 1) if first else "",
            ])
        if len(r.memory) > 1 and r.established:
            sockets = sum(_per_session(r, b.sockets, d.sockets) for b, d in r.memory.values())
            rows.append(["", "", "", "proxy tier (sum)", "", _f(total_before / 1024, 1), _f(total_during / 1024, 1),
                         "", f"**{idle_pss_kib(r):.1f}**", _f(sockets, 1), ""])
    return table(["target", "established / alive after hold", "setup/s", "process", "processes",
                  "PSS before MiB", "PSS during MiB", "RSS KiB per conn", "PSS KiB per conn",
                  "sockets per session", "kernel TCP buffers KiB per session (machine)"], rows)


def small_tier_us(r: SmallRun) -> float:
    return sum(r.us_per_command(role) for role in _tier_roles(r.target))


def small_table(world: World, runs: list[SmallRun]) -> str:
    rows = []
    for r in runs:
        ms = [t * 1000 for t in r.seconds]
        roles = _tier_roles(r.target)
        rows.append([world.targets[r.target].name, r.commands, f"{r.commands / sum(r.seconds):.0f}",
                     f"{_f(percentile(ms, 50), 3)} / {_f(percentile(ms, 99), 3)}",
                     _f(small_tier_us(r), 0) if roles else "–",
                     _f(r.us_per_command("dovecot backends"), 0)])
    return table(["target", "commands", "commands/s", "command p50 / p99 ms", "proxy tier CPU µs/command",
                  "Dovecot backends CPU µs/command"], rows)


def fetch_table(world: World, runs: list[FetchRun]) -> str:
    rows = []
    for r in runs:
        roles = _tier_roles(r.target)
        mb = r.size * len(r.times) / 1e6
        tier = sum(r.cpu.get(role, 0.0) for role in roles)
        rows.append([world.targets[r.target].name, _f(r.size / 1e6, 1), len(r.times), f"{median(r.mb_per_s):.0f}",
                     f"{min(r.mb_per_s):.0f} – {max(r.mb_per_s):.0f}",
                     _f(tier * 1000 / mb) if roles else "–", _f(r.cpu.get("dovecot backends", 0.0) * 1000 / mb)])
    return table(["target", "message MB", "fetches", "MB/s median", "MB/s min – max", "proxy tier CPU ms/MB",
                  "Dovecot backends CPU ms/MB"], rows)


def latency_table(world: World, samples: dict[str, list[float]]) -> str:
    direct = samples.get("direct", [])
    rows = []
    for key, ms in samples.items():
        added = added_latency(ms, direct)
        rows.append([world.targets[key].name, len(ms), f"{_f(percentile(ms, 50))} / {_f(percentile(ms, 99))}",
                     "–" if key == "direct" else f"{added[0]:+.2f} / {added[1]:+.2f}"])
    return table(["target", "sessions", "session p50 / p99 ms", "added p50 / p99 ms (vs direct)"], rows)


def collect_figures(logins: list[LoginRuns], latency: dict[str, list[float]], small: list[SmallRun],
                    idle: list[IdleRun], fetch: list[FetchRun], lmtp: Figures) -> Figures:
    """This run's numbers by issue-11 measure and path (see summary.py); for direct Dovecot the CPU
    figures are the backend's own, since it has no proxy tier."""
    figures: Figures = {key: value for key, value in lmtp.items() if key.startswith("lmtp_")}

    def put(measure: str, key: str, value: float) -> None:
        figures.setdefault(measure, {})[key.removesuffix("-tls")] = value

    for r in logins:
        if r.concurrency == 50 and r.target != "haproxy":
            cpu = r.ms_per_login("dovecot backends") if r.target == "direct" else tier_ms_per_login(r)
            put("imaps_login_cpu" if r.target.endswith("-tls") else "login_cpu", r.target, cpu)
            if not r.target.endswith("-tls"):
                put("logins_per_core", r.target, logins_per_core(cpu))
    direct = latency.get("direct", [])
    for key, ms in latency.items():
        p50, p99 = (percentile(ms, 50), percentile(ms, 99)) if key == "direct" else added_latency(ms, direct)
        put("latency_p50", key, p50)
        put("latency_p99", key, p99)
    for s in small:
        put("small_cmd_us", s.target, s.us_per_command("dovecot backends") if s.target == "direct" else small_tier_us(s))
    for r in idle:
        if r.established:
            put("idle_tls_pss" if r.target.endswith("-tls") else "idle_pss", r.target, idle_pss_kib(r))
            if not r.target.endswith("-tls"):
                put("idle_sockets", r.target, sum(_per_session(r, b.sockets, d.sockets) for b, d in r.memory.values()))
                put("processes", r.target, r.memory[_proxy_role(r.target) or ""][1].processes)
    if "processes" in figures:
        figures["processes"]["cores"] = os.cpu_count() or 1
    direct_fetch = next((f for f in fetch if f.target == "direct"), None)
    for f in fetch:
        if direct_fetch and f.target not in ("haproxy", "direct-tls"):
            put("fetch_ratio", f.target, median(f.mb_per_s) / median(direct_fetch.mb_per_s))
    return figures


def load_caveat(logins: list[LoginRuns], load_before: str) -> str:
    """Say so when the machine was busy with other work: rates then say little, CPU per login a bit more."""
    direct = next((r for r in logins if r.target == "direct" and r.concurrency == 50), None)
    try:
        busy = float(load_before) > (os.cpu_count() or 1) / 2
    except ValueError:
        busy = False
    if not busy:
        return ""
    return (f"\n**Caveat: the machine was busy with other work during this run** (load average {load_before} "
            f"on {os.cpu_count()} cores before it started). Rates and latencies are therefore lower and noisier "
            f"than on an idle machine; CPU per login is less affected but inflated too"
            + (f": the Dovecot backend itself took {direct.ms_per_login('dovecot backends'):.2f} ms per login here, "
               f"against {BASELINE['backend_cpu']} ms in the recipe's quiet runs" if direct else "")
            + ". Compare targets within this run, not with the recipe's absolute numbers.\n")


def _part(heading: str, body: str) -> str:
    """A subsection, or nothing for a part this run did not measure (`--only`)."""
    return f"### {heading}\n\n{body}\n\n" if body else ""


def lmtp_note(lmtp: Figures) -> str:
    if not lmtp:
        return ("The LMTP row is empty: no `lmtp_bench.py` figures in the output file yet (`make bench` runs "
                "it before this benchmark).")
    return (f"The LMTP row comes from the `LMTP delivery (issue 5)` section below (`lmtp_bench.py`, "
            f"{lmtp.get('run', {}).get('date', 'date unknown')}, load average "
            f"{lmtp.get('run', {}).get('load', 'unknown')} before it), not from this script's run.")


def render(world: World, plan: Plan, logins: list[LoginRuns], latency: dict[str, list[float]], small: list[SmallRun],
           idle: list[IdleRun], fetch: list[FetchRun], lmtp: Figures, elapsed: float, load_before: str) -> str:
    load_after = load_average()
    rows = [*machine_rows(), ("load average (1 min) before / after the run", f"{load_before} / {load_after}")]
    machine = table(["", ""], rows)
    errors = [e for r in logins for e in r.first_errors] + [e for r in idle for e in r.first_errors]
    error_note = ("\nFirst errors seen: " + "; ".join(f"`{e}`" for e in errors[:5]) + "\n") if errors else ""
    return f"""\
Written by `bench/imap_bench.py` ({plan.name} run, {elapsed / 60:.1f} min). Everything runs on the one machine
below, load generator included (one asyncio process), so all rates are CPU-bound on its cores.

### Summary against issue 11

Each row of issue 11's table measured in this run (load average {load_before} before, {load_after} after,
on {os.cpu_count()} cores shared with other work: compare paths within the run, not with other runs).
Ratios are palomar / Dovecot CE proxy (below 1: palomar cheaper or faster; for logins per core and the
FETCH ratio above 1 is better). For the CPU rows the direct column is what the Dovecot backend itself
spent per login, command or delivery, for scale (direct has no proxy tier). {lmtp_note(lmtp)}

{summary_table(collect_figures(logins, latency, small, idle, fetch, lmtp))}

{machine}
{load_caveat(logins, load_before)}
**Set-up.** Two Dovecot CE backends on shared storage with a `palomar backend` in front of each, two
`palomar proxy` instances with a worker process per core each (`service imap-login {{ process_limit = {os.cpu_count() or 1} }}`)
and HAProxy (`send-proxy-v2`), as `palomar.devcluster.LocalCluster` builds them,
plus a Dovecot CE proxy (`bench/dovecot_proxy.py`: high-performance login mode, passwd-file passdb returning
`proxy=y host= port= master= pass=`, i.e. it logs in to the backend as palomar's master user, the only login
the backends accept), and nginx's mail proxy (`bench/nginx_proxy.py`: two workers, its `auth_http` service
is the same nginx's `http` block answering from `map`s with the user's backend and the master-user login).
Users have `{{PLAIN}}` passwords in every proxy's passdb, so a login measures the proxy, not a password hash. The Dovecot proxy routes every user to the backend palomar assigned it; all benchmarked
users ({len(world.users)} of {plan.users}) are those palomar placed on {world.backend_host}, so every path ends
in the same Dovecot backend. "Direct" logs in to that backend with SASL PLAIN as the master user.

**Method.** A session is connect, greeting, `LOGIN` (direct: `AUTHENTICATE PLAIN`), `SELECT INBOX`,
`LOGOUT`, close. 50 concurrent sessions loop for {plan.seconds_c50:.0f} s, 1 session loops for
{plan.seconds_c1:.0f} s (IMAPS: 50 concurrent only); {plan.reps} rep(s) alternating targets; latency
percentiles pool all reps. Added latency: {plan.latency_rounds} rounds of one session (same steps) on each of
direct, palomar, the Dovecot proxy and nginx in turn, one at a time, the order rotating every round;
a path's session p50 (p99) minus direct Dovecot's. Logins/s per core is 1000 / the tier's CPU ms per login. Small commands: one session per
target logs in, `EXAMINE`s a mailbox of {plan.small_messages} short messages, sends 20 warm-up commands,
then {plan.small_commands} commands one at a time (no pipelining), alternating `FETCH n FLAGS` and
`FETCH n BODY.PEEK[HEADER]`; CPU is read around those {plan.small_commands} only; {plan.small_sessions} such sessions per
target, alternating targets, pooled (`/proc` counts CPU in 10 ms ticks; one tick is
{10_000 / plan.small_commands / plan.small_sessions:.0f} µs per command here). CPU is
utime+stime (+ reaped children) from `/proc/<pid>/stat` of each process tree before and after a run, divided
by completed sessions: "proxy tier" is `palomar proxy` + `palomar backend` for palomar (the HAProxy path
counts both palomar proxies), the whole Dovecot proxy process tree for Dovecot, nginx's master and
workers (auth_http included) for nginx. Idle memory: the proxy tier
is restarted, {plan.idle_sessions // 10} sessions opened and held (one-off growth), its PSS (`/proc/<pid>/smaps_rollup`)
read, {plan.idle_sessions} more sessions opened (LOGIN, SELECT
INBOX, IDLE) through the proxy's own listener (plaintext, then IMAPS; the palomar hop is TLS as
`cluster_hop_ssl = yes` makes it) and held {plan.idle_hold:.0f} s, PSS read again; the difference divided by the
sessions held. Sockets per session: socket descriptors the tree holds; kernel TCP buffers: the machine's
`/proc/net/sockstat` TCP `mem`, load generator's sockets included. Large FETCH: one {plan.fetch_size / 1e6:.0f} MB message, one
connection per path, `FETCH 1 BODY.PEEK[]` once on each to warm caches, then {plan.fetch_repeats} rounds of one timed fetch
per path, the order rotating every round. On the direct path with TLS, "direct, TLS" is a client speaking TLS
straight to the backend Dovecot's haproxy listener (PROXY v2 header, TLS, master login): Dovecot's own TLS,
the most the direct path's TLS leg can carry.

{_part("Login sessions", logins and login_table(world, logins))}\
{_part("Added latency, 1 client (interleaved sessions)", latency and latency_table(world, latency))}\
{_part("Small commands", small and small_table(world, small))}\
{_part("Memory per idle connection", idle and idle_table(world, idle))}\
{_part("Large FETCH", fetch and fetch_table(world, fetch))}\
{error_note}"""


# --- main --------------------------------------------------------------------------------------------


async def measure(world: World, plan: Plan, parts: tuple[str, ...] = PARTS):
    logins = await measure_logins(world, plan) if "logins" in parts else []
    latency = await measure_latency(world, plan) if "latency" in parts else {}
    small = await measure_small(world, plan) if "small" in parts else []
    fetch = await measure_fetch(world, plan) if "fetch" in parts else []
    idle = await measure_idle(world, plan) if "idle" in parts else []
    return logins, latency, small, idle, fetch


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="IMAP path benchmark: direct Dovecot vs palomar vs Dovecot proxy.")
    parser.add_argument("--quick", action="store_true", help="a short run (under 2 minutes), fewer idle sessions")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"),
                        help="markdown file whose '## IMAP path (issue 3)' section is written")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (configs and logs)")
    parser.add_argument("--only", choices=PARTS, action="append",
                        help="measure only this part (repeatable; default: all)")
    parser.add_argument("--backend-path", choices=("hop", "direct"), default="hop",
                        help="cluster_backend_path of the palomar cluster; `direct` writes a section of its own")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if os.geteuid() != 0:
        print("imap_bench: needs root (Dovecot backends, loopback addresses, inotify limits)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    raise_open_files_limit()  # 2,000 idle sessions: the client and the spawned servers inherit this
    root = Path(tempfile.mkdtemp(prefix="palomar-bench-"))
    root.chmod(0o755)  # Dovecot's unprivileged processes must reach the mail store below
    started = time.monotonic()
    load_before = load_average()
    world: World | None = None
    try:
        world = make_world(root, plan, args.backend_path)
        start_world(world)
        logins, latency, small, idle, fetch = asyncio.run(measure(world, plan, tuple(args.only or PARTS)))
        lmtp = read_figures(args.out.read_text()) if args.out.exists() else {}
        body = render(world, plan, logins, latency, small, idle, fetch, lmtp, time.monotonic() - started,
                      load_before)
    except Exception as exc:
        print(f"imap_bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if world is not None:
            world.dproxy.stop()
            world.nginx.stop()
            world.cluster.stop()
        if args.keep:
            log(f"run directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    heading = HEADING if args.backend_path == "hop" else f"{HEADING}, cluster_backend_path = direct"
    if args.only:
        heading = f"{heading}: {' + '.join(args.only)} only"  # a part keeps the whole
    write_section(args.out, heading, body)
    log(f"wrote '## {heading}' in {args.out} ({(time.monotonic() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
