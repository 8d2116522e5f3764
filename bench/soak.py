"""The soak (issue 16): 10,000 idle IMAP and IMAPS sessions through HAProxy and the proxies, plus a
steady login churn, for SOAK_SECONDS; memory and open descriptors of every server process sampled
throughout. After the warm-up nothing may grow (bench/soak_rules.py) and no session may fail.

One LocalCluster (HAProxy, two `palomar proxy`, two `palomar backend`, two Dovecot CE). Every user
logs in once first (places its group); then the idle sessions are opened through HAProxy, half on
its IMAP port and half on IMAPS, each logged in, INBOX selected and in IDLE, split evenly over the
two backends. While they sit there, churn workers run whole sessions (connect, LOGIN, SELECT,
LOGOUT, IMAP and IMAPS in turn) at a fixed rate. At the end every idle session ends its IDLE and
logs out: a session that does not answer OK counts as an error. The section "Soak (issue 16)" of
docs/benchmarks.md is replaced with the figures.

    sudo .venv/bin/python bench/soak.py                        # make soak: 10 minutes
    .venv/bin/python bench/soak.py --connections 500 --seconds 60 --out /tmp/soak.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chaos import tracebacks
from imap_bench import first_logins, user_backends
from imap_client import Credentials, IdleHold, ImapError, Target, close_idle, one_session, open_idle
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.dovecot import ensure_inotify_instances, raise_open_files_limit
from palomar.devcluster.haproxy import GREETING_CHECKS, HAProxyInstance, Listen
from palomar.devcluster.net import free_port
from proctree import process_children, rollup_kib, tree_pids
from report import exit_status, invocation, load_average, log, machine_rows, table, write_section
from soak_rules import FDS, MEMORY, WARMUP_FRACTION, Trend, trend

HEADING = "Soak (issue 16)"
HEADROOM = 2000
"""Descriptors and connections beyond the idle sessions: churn, probes, listeners, logs."""
METRICS = ("rss_kib", "pss_kib", "fds")
PER_USER = 50
"""Dovecot's mail_max_userip_connections: a user holds several idle sessions (all from its backend's address)."""


@dataclass(frozen=True)
class Usage:
    processes: int
    rss_kib: int
    pss_kib: int
    fds: int


@dataclass
class Series:
    """One server's samples: (seconds since the soak began, usage)."""

    name: str
    samples: list[tuple[float, Usage]] = field(default_factory=list)

    def points(self, metric: str) -> list[tuple[float, float]]:
        return [(t, float(getattr(u, metric))) for t, u in self.samples]

    def trend(self, metric: str) -> Trend:
        return trend(self.points(metric), FDS if metric == "fds" else MEMORY)


@dataclass
class Churn:
    sessions: int = 0
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    connections: int
    seconds: float
    interval: float
    churn_rate: float
    established: int = 0
    setup_errors: list[str] = field(default_factory=list)
    setup_seconds: float = 0.0
    alive: int = 0
    churn: Churn = field(default_factory=Churn)
    series: list[Series] = field(default_factory=list)
    per_backend: dict[str, int] = field(default_factory=dict)
    tracebacks: dict[str, int] = field(default_factory=dict)
    limit_warnings: list[str] = field(default_factory=list)
    load_before: str = ""
    load_after: str = ""
    open_files: int = 0

    @property
    def errors(self) -> int:
        return (self.connections - self.established) + (self.established - self.alive) + self.churn.errors

    def failures(self) -> list[str]:
        found = []
        if self.errors:
            found.append(f"{self.errors} error(s): {self.connections - self.established} sessions not established, "
                         f"{self.established - self.alive} dropped, {self.churn.errors} churn sessions failed")
        for series in self.series:
            for metric in METRICS:
                found_trend = series.trend(metric)
                if found_trend.growing:
                    found.append(f"{series.name} {metric} grew by {found_trend.growth:.0f} "
                                 f"(allowed {found_trend.allowed:.0f}) after the warm-up")
        found += [f"{count} traceback(s) in {path}" for path, count in self.tracebacks.items()]
        found += self.limit_warnings
        return found


def open_files_limit(connections: int) -> int:
    """The soft RLIMIT_NOFILE raised to the hard one (children inherit it); refuses a soak that cannot
    fit: the load generator holds one descriptor per session, each HAProxy two per session of its half."""
    raise_open_files_limit()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < connections + HEADROOM:
        raise SystemExit(f"soak: RLIMIT_NOFILE is {soft}; {connections} sessions need {connections + HEADROOM} "
                         "(raise the hard limit, e.g. `ulimit -Hn`, as root)")
    return soft


def imaps_balancer(cluster: LocalCluster, maxconn: int) -> HAProxyInstance:
    """A second HAProxy, the cluster's own `imaps` listen and settings, for the IMAPS half: one HAProxy
    process holds two descriptors per session, and all of them would not fit one process's limit."""
    port = free_port(cluster.lb_host)
    return HAProxyInstance([Listen("imaps", [(cluster.lb_host, port)],
                                   [(p.host, p.imaps_haproxy) for p in cluster.proxies],
                                   greeting=GREETING_CHECKS["imaps"])],
                           cluster.root / "haproxy-imaps", timeout_client="31m", timeout_server="31m",
                           check_interval="1s", timeout_check="2s", maxconn=maxconn)


def roots(cluster: LocalCluster, second: HAProxyInstance) -> dict[str, int]:
    """Every server whose process tree is sampled, by the name the report uses."""
    found: dict[str, int] = {}
    for node in cluster.proxies:
        assert node.proc is not None
        found[f"{node.name} (palomar proxy)"] = node.proc.pid
    for node in cluster.backends:
        assert node.proc is not None and node.dovecot.pid is not None
        found[f"{node.name} (palomar backend)"] = node.proc.pid
        found[f"{node.name} Dovecot (whole tree)"] = node.dovecot.pid
    assert cluster.haproxy is not None and cluster.haproxy.pid is not None
    assert second.pid is not None
    found["HAProxy (IMAP)"] = cluster.haproxy.pid
    found["HAProxy (IMAPS)"] = second.pid
    return found


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def usage(root: int, children: dict[int, list[int]]) -> Usage:
    pids = tree_pids(root, children)
    return Usage(len(pids), sum(rollup_kib(p, "Rss") for p in pids), sum(rollup_kib(p, "Pss") for p in pids),
                 sum(_fds(p) for p in pids))


class Sampler(threading.Thread):
    """Samples every server tree every `interval` seconds until stopped (one /proc pass per sample)."""

    def __init__(self, servers: dict[str, int], interval: float) -> None:
        super().__init__(daemon=True)
        self.servers = servers
        self.interval = interval
        self.series = {name: Series(name) for name in servers}
        self.started = time.monotonic()
        self.stopped = threading.Event()

    def sample(self) -> None:
        children = process_children()
        at = time.monotonic() - self.started
        for name, pid in self.servers.items():
            self.series[name].samples.append((at, usage(pid, children)))

    def run(self) -> None:
        self.sample()
        while not self.stopped.wait(self.interval):
            self.sample()


def balanced_users(placement: dict[str, str], users: list[Credentials], count: int) -> list[Credentials]:
    """`count` logins, split evenly over the backends, each backend's users round-robin."""
    by_backend: dict[str, list[Credentials]] = {}
    for user in users:
        by_backend.setdefault(placement[user.user], []).append(user)
    backends = sorted(by_backend)
    picked = []
    for index in range(count):
        mine = by_backend[backends[index % len(backends)]]
        picked.append(mine[(index // len(backends)) % len(mine)])
    return picked


async def churn(targets: list[Target], users: list[Credentials], rate: float, stop: asyncio.Event,
                result: Churn, workers: int = 4) -> None:
    """Whole sessions at `rate` per second in all, spread over `workers`, until `stop`."""
    period = workers / rate

    async def worker(offset: int) -> None:
        index = offset
        next_at = time.monotonic() + offset * period / workers
        while not stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            next_at += period
            target = targets[index % len(targets)]
            creds = users[index % len(users)]
            index += workers
            try:
                async with asyncio.timeout(30):
                    await one_session(target, creds)
                result.sessions += 1
            except (OSError, ImapError, TimeoutError, asyncio.IncompleteReadError) as exc:
                result.errors += 1
                if len(result.first_errors) < 5:
                    result.first_errors.append(f"{target.name}: {type(exc).__name__}: {exc}")

    await asyncio.gather(*(worker(i) for i in range(workers)))


async def soak(cluster: LocalCluster, second: HAProxyInstance, outcome: Outcome, users: list[Credentials]) -> None:
    imap = Target("IMAP", cluster.lb_host, cluster.lb_imap)
    imaps = Target("IMAPS", cluster.lb_host, second.listens[0].binds[0][1], tls=True)
    log(f"opening {outcome.connections} idle sessions (IMAP and IMAPS) through HAProxy")
    started = time.monotonic()
    holds: list[IdleHold] = []
    for target, share in ((imap, outcome.connections // 2), (imaps, outcome.connections - outcome.connections // 2)):
        offset = 0 if target is imap else outcome.connections // 2
        hold = await open_idle(target, users[offset:offset + share], share, concurrency=40, timeout=120)
        holds.append(hold)
        outcome.established += len(hold.sessions)
        outcome.setup_errors += hold.first_errors
        log(f"{target.name}: {len(hold.sessions)}/{share} idle sessions, {hold.errors} errors")
    outcome.setup_seconds = time.monotonic() - started
    sampler = Sampler(roots(cluster, second), outcome.interval)
    stop = asyncio.Event()
    log(f"soaking for {outcome.seconds:.0f}s with {outcome.churn_rate:g} logins/s of churn")
    sampler.start()
    churning = asyncio.create_task(churn([imap, imaps], users, outcome.churn_rate, stop, outcome.churn))
    await asyncio.sleep(outcome.seconds)  # the soak itself: holding the sessions is what is measured
    stop.set()
    await churning
    sampler.stopped.set()
    sampler.join(60)
    sampler.sample()
    outcome.series = list(sampler.series.values())
    log("ending IDLE and logging out of every idle session")
    for hold in holds:
        outcome.alive += await close_idle(hold, concurrency=40)


LIMIT_WARNINGS = ("process_limit", "client_limit", "Too many open files", "Connection queue full",
                  "Maximum number of connections")


def limit_warnings(cluster: LocalCluster) -> list[str]:
    """Lines in any server log saying a connection or process limit was reached."""
    found = []
    for path in cluster.root.rglob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if any(marker in line for marker in LIMIT_WARNINGS):
                found.append(f"{path.name}: {line.strip()[:160]}")
    return found[:10]


def run(root: Path, args: argparse.Namespace) -> Outcome:
    outcome = Outcome(args.connections, args.seconds, args.interval, args.churn_rate, load_before=load_average())
    outcome.open_files = open_files_limit(args.connections)
    ensure_inotify_instances(2 * args.connections)
    maxconn = args.connections // 2 + HEADROOM
    cluster = LocalCluster(root / "cluster", users_count=args.users, allow_cleartext=True, password_scheme="PLAIN",
                           auth_failure_delay="0 secs", haproxy_maxconn=maxconn,
                           backend_dovecot_settings={"*": (("mail_max_userip_connections", str(PER_USER)),)})
    second: HAProxyInstance | None = None
    try:
        log("starting the cluster")
        cluster.start()
        second = imaps_balancer(cluster, maxconn)
        second.start()
        everyone = [Credentials(u.name, u.password) for u in cluster.users]
        log(f"first login of {len(everyone)} users (places their groups)")
        proxy1 = cluster.proxies[0]
        asyncio.run(first_logins(Target("warm-up", proxy1.host, proxy1.imap), everyone))
        placement = user_backends(cluster)
        picked = balanced_users(placement, everyone, args.connections)
        outcome.per_backend = dict(Counter(placement[u.user] for u in picked))
        asyncio.run(soak(cluster, second, outcome, picked))
        outcome.load_after = load_average()
        outcome.tracebacks = tracebacks(cluster)
        outcome.limit_warnings = limit_warnings(cluster)
        return outcome
    finally:
        if second is not None:
            second.stop()
        cluster.stop()


# --- the report ----------------------------------------------------------------------------------------
def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def render(outcome: Outcome, command: str) -> str:
    rows = []
    for series in outcome.series:
        if not series.samples:
            continue
        last = series.samples[-1][1]
        memory, fds = series.trend("pss_kib"), series.trend("fds")
        rss = series.trend("rss_kib")
        rows.append([series.name, last.processes, _mib(rss.median), _mib(memory.median),
                     f"{memory.growth / 1024:+.1f} (±{memory.allowed / 1024:.1f})",
                     f"{rss.growth / 1024:+.1f} (±{rss.allowed / 1024:.1f})", f"{fds.median:.0f}",
                     f"{fds.growth:+.0f} (±{fds.allowed:.0f})",
                     "yes" if any(series.trend(m).growing for m in METRICS) else "no"])
    failures = outcome.failures()
    samples = len(outcome.series[0].samples) if outcome.series else 0
    return f"""Written by {command}; `make soak` reruns it (SOAK_SECONDS, default 600).

Method: one `LocalCluster` (HAProxy, two `palomar proxy`, two `palomar backend`, two Dovecot CE).
{outcome.connections} idle sessions through HAProxy, half IMAP and half IMAPS (the proxies' TLS
listeners behind HAProxy's `imaps` listen, in a second HAProxy process with the same settings: one
process holds two descriptors per session and this machine's hard RLIMIT_NOFILE is
{outcome.open_files}, which a process here cannot raise), each logged in with INBOX selected and
in IDLE, split over the backends ({", ".join(f"{host}: {n}" for host, n in sorted(outcome.per_backend.items()))}).
Then for {outcome.seconds:.0f}s a login churn of {outcome.churn_rate:g} whole sessions per second
(connect, LOGIN, SELECT, LOGOUT; IMAP and IMAPS in turn) beside them, while every server's process
tree is sampled, {outcome.interval:g}s apart (reading 10,000 processes takes a while itself): RSS and PSS (`/proc/PID/smaps_rollup`) and open
descriptors (`/proc/PID/fd`), summed over the tree. At the end every idle session ends IDLE and
logs out. Limits raised for it: the soft RLIMIT_NOFILE to the hard one, {outcome.open_files}
(inherited by every server), HAProxy `maxconn {outcome.connections // 2 + HEADROOM}` per process,
Dovecot `service imap {{ process_limit = 6000 }}` per backend (one process per session, as Dovecot
recommends for mail processes), `mail_max_userip_connections = {PER_USER}` (every session of a user
comes from its backend's address); the proxies' `client_limit` default (10,000 per service and
process) holds their half each.

Growth rule (`bench/soak_rules.py`): the first {WARMUP_FRACTION:.0%} of the soak is warm-up; over
the rest a least-squares line is fitted through the samples and its slope times that window's
length is the growth. Growth beyond max(4 MiB, 3 % of the median) of memory, or max(20, 1 % of
the median) descriptors, fails; so does any error, traceback or limit warning in a log.

**{"Flat, no errors." if not failures else f"{len(failures)} failure(s):"}**
{"".join(f"{chr(10)}- {line}" for line in failures)}

- Idle sessions: {outcome.established}/{outcome.connections} established in {outcome.setup_seconds:.0f}s,
  {outcome.alive} answered OK to DONE after the soak.
- Churn: {outcome.churn.sessions} sessions, {outcome.churn.errors} failed{_first(outcome.churn.first_errors)}.
- Setup errors: {len(outcome.setup_errors)}{_first(outcome.setup_errors)}.
- Samples per process: {samples}. Tracebacks in logs: {sum(outcome.tracebacks.values())}.
- Load average (1 min) before / after: {outcome.load_before} / {outcome.load_after}.

Usage after the warm-up (median; growth = fitted slope over the judged window, ± what the rule
allows):

{table(["process", "processes", "RSS MiB", "PSS MiB", "PSS growth MiB", "RSS growth MiB", "fds",
        "fd growth", "growing"], rows)}

PSS per idle session (median after the warm-up over {outcome.connections} sessions): {_per_session(outcome)}.
The palomar processes' share is mostly TLS: Python 3.11's asyncio gives every TLS connection a
256 KiB read buffer (`asyncio.sslproto.SSLProtocol.max_size`), and a proxy holds two per IMAPS
session (client and hop) and one per IMAP session (the hop), a backend one per session.

Machine:

{table(["", ""], machine_rows())}
"""


def _per_session(outcome: Outcome) -> str:
    kinds = {"palomar proxy": "(palomar proxy)", "palomar backend": "(palomar backend)", "Dovecot": "Dovecot",
             "HAProxy": "HAProxy"}
    parts = []
    for label, marker in kinds.items():
        total = sum(series.trend("pss_kib").median for series in outcome.series if marker in series.name)
        parts.append(f"{label} {total / max(outcome.connections, 1):.0f} KiB")
    return ", ".join(parts)


def _first(errors: list[str]) -> str:
    return f" (first: {'; '.join(errors[:3])})" if errors else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--churn-rate", type=float, default=5.0, help="churn sessions per second")
    parser.add_argument("--out", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="palomar-soak-"))
    base.chmod(0o755)
    try:
        outcome = run(base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    write_section(Path(args.out), HEADING, render(outcome, invocation("bench/soak.py", argv)))
    log(f"wrote the section {HEADING!r} of {args.out}")
    return exit_status(outcome.failures())


if __name__ == "__main__":
    sys.exit(main())
