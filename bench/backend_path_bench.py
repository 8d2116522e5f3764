"""The backend path side by side (issue 11): `cluster_backend_path = hop` against `direct`, each with
`cluster_hop_ssl` yes and no: four LocalClusters running at once on one loopback, measured in
alternation (each round measures every cluster, the order rotating), so other work on the machine
hits every path alike. Writes the `## Backend path: hop vs direct (issue 11)` section of
docs/benchmarks.md; nothing else in that file is touched.

    .venv/bin/python bench/backend_path_bench.py [--rounds 3] [--out docs/benchmarks.md]

Rows: CPU per login (LOGIN, SELECT, LOGOUT; 50 concurrent) of the palomar tier (proxy + backend
service) and of the backends' Dovecot; added wall time per session (one client, p50/p99); tier CPU
per small command (FETCH FLAGS / HEADER in one session); PSS per idle IMAPS session of the palomar
tier and the kernel sockets it holds per session. Sessions go to the first proxy directly (no HAProxy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from imap_bench import first_logins, memory_of
from imap_client import (
    Connection,
    Credentials,
    Target,
    close_idle,
    login_loop,
    one_session,
    open_idle,
    small_command_lines,
    small_message,
    timed_commands,
)
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.dovecot import raise_open_files_limit
from proctree import CpuMeter
from report import load_average, log, machine_rows, median, percentile, table, write_section

HEADING = "Backend path: hop vs direct (issue 11)"
PATHS = {"hop-tls": dict(hop_tls=True), "direct-tls": dict(hop_tls=True, backend_path="direct"),
         "hop": dict(hop_tls=False), "direct": dict(hop_tls=False, backend_path="direct")}
LABELS = {"hop-tls": "hop, TLS (default)", "direct-tls": "direct, TLS", "hop": "hop, cluster_hop_ssl = no",
          "direct": "direct, cluster_hop_ssl = no"}
SMALL_MAILBOX = "BenchSmall"


def start_clusters(root: Path, users: int) -> dict[str, LocalCluster]:
    clusters = {}
    for index, (key, options) in enumerate(PATHS.items()):
        cluster = LocalCluster(root / key, backends_count=2, proxies_count=1, users_count=users,
                               allow_cleartext=True, password_scheme="PLAIN", auth_failure_delay="0 secs",
                               host_offset=40 + 15 * index,  # clear of the tests' 127.0.0.2-11 and DC2's 102-111
                               lb_ipv6="", **options)
        log(f"starting the {key} cluster")
        cluster.start()
        clusters[key] = cluster
    return clusters


def trees(cluster: LocalCluster) -> dict[str, list[int]]:
    return {
        "proxy": [p.proc.pid for p in cluster.proxies if p.proc is not None],
        "backend service": [b.proc.pid for b in cluster.backends if b.proc is not None],
        "dovecot": [b.dovecot.pid for b in cluster.backends if b.dovecot.pid is not None],
    }


def rotated(keys: list[str], round_: int) -> list[str]:
    shift = round_ % len(keys)
    return keys[shift:] + keys[:shift]


async def measure(clusters: dict[str, LocalCluster], rounds: int, seconds: float, idle: int) -> dict:
    targets = {k: Target(k, c.proxies[0].host, c.proxies[0].imap) for k, c in clusters.items()}
    tls_targets = {k: Target(k, c.proxies[0].host, c.proxies[0].imaps, tls=True) for k, c in clusters.items()}
    users = {k: [Credentials(u.name, u.password) for u in c.users] for k, c in clusters.items()}
    for key in clusters:
        log(f"first logins on {key}")
        await first_logins(targets[key], users[key])
        conn = await Connection.open(targets[key])
        await conn.login(targets[key], users[key][0])
        await conn.command(f'CREATE "{SMALL_MAILBOX}"'.encode())
        for i in range(10):
            await conn.append(SMALL_MAILBOX, small_message(i))
        await conn.logout()
    cpu: dict[str, defaultdict[str, float]] = {k: defaultdict(float) for k in clusters}
    sessions = dict.fromkeys(clusters, 0)
    errors = dict.fromkeys(clusters, 0)
    latency: dict[str, list[float]] = {k: [] for k in clusters}
    small_cpu: dict[str, defaultdict[str, float]] = {k: defaultdict(float) for k in clusters}
    small_count = dict.fromkeys(clusters, 0)
    idle_kib: dict[str, list[tuple[float, float]]] = {k: [] for k in clusters}
    lines = small_command_lines(1000, 10)
    keys = list(clusters)
    loads = [load_average()]
    for round_ in range(rounds):
        for key in rotated(keys, round_):
            meter = CpuMeter(trees(clusters[key])).start()
            result = await login_loop(targets[key], users[key], concurrency=50, duration=seconds, max_sessions=20000)
            for role, spent in meter.stop().items():
                cpu[key][role] += spent
            sessions[key] += result.sessions
            errors[key] += result.errors
            log(f"round {round_ + 1} {key}: {result.rate:.0f} logins/s, {result.errors} errors "
                f"{result.first_errors[:1]}")
        for i in range(100):
            for key in rotated(keys, i):
                session_s, _ = await one_session(targets[key], users[key][i % len(users[key])])
                latency[key].append(session_s * 1000)
        for key in rotated(keys, round_):
            conn = await Connection.open(targets[key])
            await conn.login(targets[key], users[key][0])
            await conn.command(f'EXAMINE "{SMALL_MAILBOX}"'.encode())
            await timed_commands(conn, lines[:20])
            meter = CpuMeter(trees(clusters[key])).start()
            small_count[key] += len(await timed_commands(conn, lines))
            for role, spent in meter.stop().items():
                small_cpu[key][role] += spent
            await conn.logout()
        for key in rotated(keys, round_):
            roles = trees(clusters[key])
            tier = roles["proxy"] + roles["backend service"]
            warm = await open_idle(tls_targets[key], users[key], idle // 10)
            before = memory_of(tier)
            hold = await open_idle(tls_targets[key], users[key], idle)
            await asyncio.sleep(1)  # the sessions sit in IDLE: that is what is measured
            during = memory_of(tier)
            held = len(hold.sessions)
            await close_idle(hold)
            await close_idle(warm)
            if held:
                idle_kib[key].append(((during.pss_kib - before.pss_kib) / held, (during.sockets - before.sockets) / held))
            log(f"round {round_ + 1} {key}: {held}/{idle} idle IMAPS sessions")
        loads.append(load_average())
    return dict(cpu=cpu, sessions=sessions, errors=errors, latency=latency, small_cpu=small_cpu,
                small_count=small_count, idle=idle_kib, loads=loads)


def render(figures: dict, rounds: int, seconds: float, idle: int, argv: list[str]) -> str:
    rows = []
    for key, label in LABELS.items():
        n = figures["sessions"][key] or 1
        cpu = figures["cpu"][key]
        small = figures["small_cpu"][key]
        commands = figures["small_count"][key] or 1
        lat = figures["latency"][key]
        idle_rows = figures["idle"][key]
        rows.append([
            label,
            f"{cpu['proxy'] * 1000 / n:.2f}", f"{cpu['backend service'] * 1000 / n:.2f}",
            f"**{(cpu['proxy'] + cpu['backend service']) * 1000 / n:.2f}**", f"{cpu['dovecot'] * 1000 / n:.2f}",
            f"{figures['sessions'][key]} / {figures['errors'][key]}",
            f"{median(lat):.1f} / {percentile(lat, 99):.1f}",
            f"{(small['proxy'] + small['backend service']) * 1e6 / commands:.0f}",
            f"{median([p for p, _ in idle_rows]):.1f}" if idle_rows else "-",
            f"{median([s for _, s in idle_rows]):.1f}" if idle_rows else "-",
        ])
    body = [
        f"`.venv/bin/python bench/backend_path_bench.py {' '.join(argv)}`: four clusters at once (2 Dovecot "
        "backends, 1 palomar proxy each), sessions straight to the proxy, every measure taken in rounds that "
        f"alternate the clusters ({rounds} rounds; {seconds:g} s of logins at 50 concurrent per cluster and round; "
        f"100 single-client sessions per cluster and round; 1,000 small commands; {idle} idle IMAPS sessions). "
        f"1-minute load average at the start and after each round: {', '.join(figures['loads'])} (a shared "
        "2-core machine: absolute numbers move with the load, the ratios between the paths in one run are "
        "what to read).",
        "",
        table(["path", "proxy ms/login", "backend service ms/login", "palomar tier ms/login",
               "Dovecot ms/login", "logins / errors", "session ms p50 / p99 (1 client)",
               "tier µs per small command", "tier PSS KiB per idle IMAPS session", "tier sockets per session"], rows),
        "",
        table(["machine", ""], machine_rows()),
    ]
    return "\n".join(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="palomar hop vs direct backend path, side by side.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0, help="login load per cluster and round")
    parser.add_argument("--idle", type=int, default=300, help="idle IMAPS sessions per cluster and round")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    raise_open_files_limit()
    root = Path(tempfile.mkdtemp(prefix="palomar-pathbench-"))
    os.chmod(root, 0o755)
    clusters: dict[str, LocalCluster] = {}
    try:
        clusters = start_clusters(root, args.users)
        figures = asyncio.run(measure(clusters, args.rounds, args.seconds, args.idle))
    finally:
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_section(args.out, HEADING, render(figures, args.rounds, args.seconds, args.idle,
                                            sys.argv[1:] if argv is None else argv))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
