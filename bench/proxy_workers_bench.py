"""Logins per second through one proxy process against a proxy with two worker processes.

One LocalCluster: two Dovecot CE backends with their `palomar backend`, and two proxies on the same
backends: `proxy1` alone (the default), `proxy2` with `service imap-login { process_limit = 2 }`.
The two are measured alternately (LOGIN, SELECT, LOGOUT sessions at concurrency 50), with the CPU
of each tier. Results go to the `## Proxy worker processes` section of docs/benchmarks.md.

    .venv/bin/python bench/proxy_workers_bench.py [--reps 3] [--seconds 10] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from imap_bench import first_logins
from imap_client import Credentials, Target, login_loop
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.dovecot import raise_open_files_limit
from proctree import CpuMeter
from report import load_average, log, machine_rows, median, table, write_section

HEADING = "Proxy worker processes"
CONCURRENCY = 50


def run(reps: int, seconds: float) -> str:
    root = Path(tempfile.mkdtemp(prefix="palomar-workers-bench-"))
    root.chmod(0o755)
    cluster = LocalCluster(root / "cluster", users_count=200, allow_cleartext=True, password_scheme="PLAIN",
                           auth_failure_delay="0 secs", proxies_count=2,
                           proxy_settings={"proxy2": ("service imap-login {", "  process_limit = 2", "}")})
    try:
        cluster.start()
        users = [Credentials(u.name, u.password) for u in cluster.users]
        targets = {1: Target("1 process", cluster.proxies[0].host, cluster.proxies[0].imap),
                   2: Target("2 workers", cluster.proxies[1].host, cluster.proxies[1].imap)}
        log("first login of every user (assigns their groups)")
        asyncio.run(first_logins(targets[1], users))
        rates: dict[int, list[float]] = defaultdict(list)
        cpu: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        sessions: dict[int, int] = defaultdict(int)
        errors: dict[int, int] = defaultdict(int)
        loads = []
        for rep in range(1, reps + 1):
            for workers, proxy in ((1, cluster.proxies[0]), (2, cluster.proxies[1])):
                assert proxy.proc is not None
                meter = CpuMeter({"proxy": [proxy.proc.pid],
                                  "palomar backend": [b.proc.pid for b in cluster.backends if b.proc is not None],
                                  "dovecot": [b.dovecot.pid for b in cluster.backends if b.dovecot.pid]}).start()
                result = asyncio.run(login_loop(targets[workers], users, concurrency=CONCURRENCY, duration=seconds,
                                                max_sessions=10**9))
                for role, spent in meter.stop().items():
                    cpu[workers][role] += spent
                rates[workers].append(result.rate)
                sessions[workers] += result.sessions
                errors[workers] += result.errors
                loads.append(load_average())
                log(f"rep {rep} {targets[workers].name}: {result.rate:.0f} sessions/s, {result.errors} errors")
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    rows = []
    for workers in (1, 2):
        per = {role: spent * 1000 / sessions[workers] for role, spent in cpu[workers].items()} if sessions[workers] else {}
        rows.append((targets[workers].name, f"{median(rates[workers]):.0f}",
                     f"{min(rates[workers]):.0f}-{max(rates[workers]):.0f}", errors[workers],
                     f"{per.get('proxy', 0):.2f}", f"{per.get('palomar backend', 0):.2f}",
                     f"{per.get('dovecot', 0):.2f}"))
    ratio = median(rates[2]) / median(rates[1]) if median(rates[1]) else 0.0
    body = "\n\n".join([
        f"`bench/proxy_workers_bench.py --reps {reps} --seconds {seconds:g}`: LOGIN + SELECT + LOGOUT sessions at "
        f"concurrency {CONCURRENCY}, {reps} alternating runs of {seconds:g} s per proxy, one proxy process against "
        "a proxy with `process_limit = 2`, same two Dovecot backends and `palomar backend` services. "
        f"1-minute load average during the runs: {', '.join(loads)}.",
        table(("proxy", "sessions/s, median", "range", "errors", "proxy CPU ms/session",
               "palomar backend CPU ms/session", "Dovecot CPU ms/session"), rows),
        f"Two workers against one process: {ratio:.2f}x the sessions per second. Read it with the load average: "
        "the load generator, HAProxy, both `palomar backend` services and both Dovecots run on the same two cores, "
        "so when they are full a second proxy worker can only take CPU from the rest of the tier; the proxy "
        "is a quarter to a third of the tier's CPU per session here. Workers help where the proxy has cores "
        "of its own (a proxy host), which this machine cannot show.",
        table(("machine", ""), machine_rows()),
    ])
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, help="markdown file whose section is written")
    args = parser.parse_args()
    raise_open_files_limit()
    body = run(args.reps, args.seconds)
    print(body)
    if args.out:
        write_section(args.out, HEADING, body)


if __name__ == "__main__":
    main()
