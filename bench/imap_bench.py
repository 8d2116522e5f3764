"""IMAP path benchmark (issue 3): palomar against Dovecot directly and against Dovecot's own proxy.

One run starts one LocalCluster (two Dovecot CE backends, a `palomar backend` in front of
each, two `palomar proxy` processes, HAProxy) plus a Dovecot CE proxy in front of the same
backends, and measures login sessions, memory per idle IDLE connection and large FETCH
throughput side by side. Results go to the `## IMAP path (issue 3)` section of
docs/benchmarks.md; nothing else in that file is touched.

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
    fetch_times,
    large_message,
    login_loop,
    one_session,
    open_idle,
)
from nginx_proxy import NginxProxy
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.dovecot import raise_open_files_limit
from palomar.devcluster.net import free_port
from proctree import CpuMeter, TreeMemory, tcp_memory_kib, tree_memory
from report import load_average, log, machine_rows, median, percentile, table, write_section

HEADING = "IMAP path (issue 3)"
DOVECOT_PROXY_HOST = "127.0.0.20"
NGINX_HOST = "127.0.0.21"
LARGE_MAILBOX = "BenchLarge"
BASELINE = {"target_kib": 8, "target_tls_kib": 16, "backend_cpu": "3.5-3.9"}
PARTS = ("logins", "fetch", "idle")


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


FULL = Plan("full", reps=3, seconds_c50=15, seconds_c1=6, max_sessions=20000, idle_sessions=2000, idle_hold=5,
            fetch_size=20 * 1024 * 1024, fetch_repeats=8)
QUICK = Plan("quick", reps=1, seconds_c50=4, seconds_c1=2, max_sessions=5000, idle_sessions=500, idle_hold=1,
             fetch_size=20 * 1024 * 1024, fetch_repeats=2)


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


def make_world(root: Path, plan: Plan) -> World:
    """The servers, configured but not started (so a failed start can still stop what did start)."""
    cluster = LocalCluster(root / "cluster", users_count=plan.users, allow_cleartext=True, password_scheme="PLAIN",
                           auth_failure_delay="0 secs")
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
        for key in ("direct", "palomar", "haproxy", "dovecot", "nginx"):
            target = world.targets[key]
            for concurrency, seconds in ((50, plan.seconds_c50), (1, plan.seconds_c1)):
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


# --- 3. large FETCH ----------------------------------------------------------------------------------


@dataclass
class FetchRun:
    target: str
    size: int
    times: list[float]
    cpu: dict[str, float]

    @property
    def mb_per_s(self) -> list[float]:
        return [self.size / 1e6 / t for t in self.times]


async def store_large_message(world: World, creds: Credentials, size: int) -> None:
    conn = await Connection.open(world.targets["direct"])
    try:
        await conn.login(world.targets["direct"], creds)
        with contextlib.suppress(ImapError):  # not there yet
            await conn.command(f'DELETE "{LARGE_MAILBOX}"'.encode())
        await conn.command(f'CREATE "{LARGE_MAILBOX}"'.encode())
        await conn.append(LARGE_MAILBOX, large_message(size))
        await conn.logout()
    except BaseException:
        conn.abort()
        raise


async def measure_fetch(world: World, plan: Plan) -> list[FetchRun]:
    creds = world.users[0]
    log(f"appending a {plan.fetch_size / 1e6:.0f} MB message for {creds.user}")
    await store_large_message(world, creds, plan.fetch_size)
    runs = []
    for key in ("direct", "palomar", "haproxy", "dovecot", "nginx"):
        meter = CpuMeter(world.trees()).start()
        size, times = await fetch_times(world.targets[key], creds, LARGE_MAILBOX, plan.fetch_repeats)
        spent = meter.stop()
        runs.append(FetchRun(key, size, times, spent))
        log(f"FETCH via {world.targets[key].name}: median {median([size / 1e6 / t for t in times]):.0f} MB/s")
    return runs


# --- report -----------------------------------------------------------------------------------------


def _f(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def _tier_roles(key: str) -> list[str]:
    return {"direct": [], "palomar": ["palomar proxy", "palomar backend"],
            "haproxy": ["palomar proxy", "palomar backend"], "dovecot": ["dovecot proxy"],
            "palomar-tls": ["palomar proxy", "palomar backend"], "dovecot-tls": ["dovecot proxy"],
            "nginx": ["nginx"], "nginx-tls": ["nginx"]}[key]


def login_table(world: World, runs: list[LoginRuns]) -> str:
    rows = []
    for r in runs:
        roles = _tier_roles(r.target)
        proxy = {"palomar": "palomar proxy", "haproxy": "palomar proxy", "dovecot": "dovecot proxy",
                 "nginx": "nginx"}.get(r.target)
        tier = sum(r.ms_per_login(role) for role in roles)
        rows.append([
            world.targets[r.target].name, r.concurrency, len(r.rates),
            f"{median(r.rates):.0f} ({', '.join(f'{x:.0f}' for x in r.rates)})",
            f"{_f(percentile(r.session_ms, 50))} / {_f(percentile(r.session_ms, 99))}",
            f"{_f(percentile(r.login_ms, 50))} / {_f(percentile(r.login_ms, 99))}",
            _f(r.ms_per_login(proxy)) if proxy else "–",
            _f(r.ms_per_login("palomar backend")) if r.target in ("palomar", "haproxy") else "–",
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


def _against(value: float, target: float) -> str:
    return "met" if value <= target else f"not met ({value / target:.1f}× the target)"


def verdicts(logins: list[LoginRuns], idle: list[IdleRun]) -> str:
    by = {(r.target, r.concurrency): r for r in logins}
    lines = []
    pal, dov, ngx = by.get(("palomar", 50)), by.get(("dovecot", 50)), by.get(("nginx", 50))
    if pal and dov and ngx:
        pal_ms = pal.ms_per_login("palomar proxy") + pal.ms_per_login("palomar backend")
        lines.append(
            f"* **CPU per login** (50 concurrent): palomar proxy tier {pal_ms:.2f} ms "
            f"({pal.ms_per_login('palomar proxy'):.2f} proxy + {pal.ms_per_login('palomar backend'):.2f} backend "
            f"service); Dovecot CE proxy {dov.ms_per_login('dovecot proxy'):.2f} ms, nginx + auth_http "
            f"{ngx.ms_per_login('nginx'):.2f} ms measured here. Target: at most the Dovecot proxy's: "
            f"{_against(pal_ms, dov.ms_per_login('dovecot proxy'))}."
        )
    mem = {r.target: r for r in idle if r.established}
    for key, label, target in (("palomar", "IMAP", BASELINE["target_kib"]),
                               ("palomar-tls", "IMAPS", BASELINE["target_tls_kib"])):
        if key not in mem:
            continue
        total = idle_pss_kib(mem[key])
        others = "".join(f"; {name} {idle_pss_kib(mem[other]):.1f} KiB"
                         for name, other in (("Dovecot CE proxy", key.replace("palomar", "dovecot")),
                                             ("nginx", key.replace("palomar", "nginx"))) if other in mem)
        lines.append(
            f"* **Memory per idle {label} connection** (PSS): palomar proxy tier {total:.1f} KiB{others} measured "
            f"here. Target {target} KiB: {_against(total, target)}."
        )
    return "\n".join(lines)


def load_caveat(logins: list[LoginRuns], load_before: str) -> str:
    """Say so when the machine was busy with other work: rates then say little, CPU per login a bit more."""
    direct = next((r for r in logins if r.target == "direct" and r.concurrency == 50), None)
    backend_ms = direct.ms_per_login("dovecot backends") if direct else 0.0
    try:
        busy = float(load_before) > (os.cpu_count() or 1) / 2
    except ValueError:
        busy = False
    if not busy:
        return ""
    return (f"\n**Caveat: the machine was busy with other work during this run** (load average {load_before} "
            f"on {os.cpu_count()} cores before it started). Rates and latencies are therefore lower and noisier "
            f"than on an idle machine; CPU per login is less affected but inflated too: the Dovecot backend "
            f"itself took {backend_ms:.2f} ms per login here, against {BASELINE['backend_cpu']} ms in the recipe's "
            f"quiet runs. Compare targets within this run, not with the recipe's absolute numbers.\n")


def _part(heading: str, body: str) -> str:
    """A subsection, or nothing for a part this run did not measure (`--only`)."""
    return f"### {heading}\n\n{body}\n\n" if body else ""


def render(world: World, plan: Plan, logins: list[LoginRuns], idle: list[IdleRun], fetch: list[FetchRun],
           elapsed: float, load_before: str) -> str:
    rows = [*machine_rows(), ("load average (1 min) before / after the run", f"{load_before} / {load_average()}")]
    machine = table(["", ""], rows)
    errors = [e for r in logins for e in r.first_errors] + [e for r in idle for e in r.first_errors]
    error_note = ("\nFirst errors seen: " + "; ".join(f"`{e}`" for e in errors[:5]) + "\n") if errors else ""
    return f"""\
Written by `bench/imap_bench.py` ({plan.name} run, {elapsed / 60:.1f} min). Everything runs on the one machine
below, load generator included (one asyncio process), so all rates are CPU-bound on its cores.

{machine}
{load_caveat(logins, load_before)}
**Set-up.** Two Dovecot CE backends on shared storage with a `palomar backend` in front of each, two
`palomar proxy` processes and HAProxy (`send-proxy-v2`), as `palomar.devcluster.LocalCluster` builds them,
plus a Dovecot CE proxy (`bench/dovecot_proxy.py`: high-performance login mode, passwd-file passdb returning
`proxy=y host= port= master= pass=`, i.e. it logs in to the backend as palomar's master user, the only login
the backends accept), and nginx's mail proxy (`bench/nginx_proxy.py`: two workers, its `auth_http` service
is the same nginx's `http` block answering from `map`s with the user's backend and the master-user login).
Users have `{{PLAIN}}` passwords in every proxy's passdb, so a login measures the proxy, not a password hash. The Dovecot proxy routes every user to the backend palomar assigned it; all benchmarked
users ({len(world.users)} of {plan.users}) are those palomar placed on {world.backend_host}, so every path ends
in the same Dovecot backend. "Direct" logs in to that backend with SASL PLAIN as the master user.

**Method.** A session is connect, greeting, `LOGIN` (direct: `AUTHENTICATE PLAIN`), `SELECT INBOX`,
`LOGOUT`, close. 50 concurrent sessions loop for {plan.seconds_c50:.0f} s, 1 session loops for
{plan.seconds_c1:.0f} s; {plan.reps} rep(s) alternating targets; latency percentiles pool all reps. CPU is
utime+stime (+ reaped children) from `/proc/<pid>/stat` of each process tree before and after a run, divided
by completed sessions: "proxy tier" is `palomar proxy` + `palomar backend` for palomar (the HAProxy path
counts both palomar proxies), the whole Dovecot proxy process tree for Dovecot, nginx's master and
workers (auth_http included) for nginx. Idle memory: the proxy tier
is restarted, {plan.idle_sessions // 10} sessions opened and held (one-off growth), its PSS (`/proc/<pid>/smaps_rollup`)
read, {plan.idle_sessions} more sessions opened (LOGIN, SELECT
INBOX, IDLE) through the proxy's own listener (plaintext, then IMAPS; the palomar hop is TLS as
`cluster_hop_ssl = yes` makes it) and held {plan.idle_hold:.0f} s, PSS read again; the difference divided by the
sessions held. Sockets per session: socket descriptors the tree holds; kernel TCP buffers: the machine's
`/proc/net/sockstat` TCP `mem`, load generator's sockets included. Large FETCH: one {plan.fetch_size / 1e6:.0f} MB message, `FETCH 1 BODY.PEEK[]` once
to warm caches, then {plan.fetch_repeats} timed fetches over one connection.

{_part("Login sessions", logins and login_table(world, logins))}\
{_part("Memory per idle connection", idle and idle_table(world, idle))}\
{_part("Large FETCH", fetch and fetch_table(world, fetch))}\
### Against the targets

{verdicts(logins, idle)}
{error_note}"""


# --- main --------------------------------------------------------------------------------------------


async def measure(world: World, plan: Plan, parts: tuple[str, ...] = PARTS):
    logins = await measure_logins(world, plan) if "logins" in parts else []
    fetch = await measure_fetch(world, plan) if "fetch" in parts else []
    idle = await measure_idle(world, plan) if "idle" in parts else []
    return logins, idle, fetch


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
        world = make_world(root, plan)
        start_world(world)
        logins, idle, fetch = asyncio.run(measure(world, plan, tuple(args.only or PARTS)))
        body = render(world, plan, logins, idle, fetch, time.monotonic() - started, load_before)
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
    heading = HEADING if not args.only else f"{HEADING}: {' + '.join(args.only)} only"  # a part keeps the whole
    write_section(args.out, heading, body)
    log(f"wrote '## {heading}' in {args.out} ({(time.monotonic() - started) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
