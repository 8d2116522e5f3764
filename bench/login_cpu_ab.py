"""CPU per IMAP login of two palomar versions side by side, on the hop and the direct path.

For a change to the login path: the tree under test (this checkout) and an older one (`--old-src`,
e.g. `git archive <commit> src | tar -x -C /tmp/old`, then `--old-src /tmp/old/src`) each run a
LocalCluster per backend path (2 Dovecot backends, 1 proxy, hop TLS as `--hop-ssl` says (on by
default), PLAIN passwords, no auth failure delay), all at once; rounds of logins (LOGIN, SELECT, LOGOUT; 50 concurrent) alternate the
clusters, the order rotating, so other work on a shared machine hits old and new alike. Prints
the CPU per login of the proxy, the backend service and the backends' Dovecot (the control: its
work per login is the same in both versions) per cluster; writes nothing.

    .venv/bin/python bench/login_cpu_ab.py --old-src /tmp/old/src [--rounds 6] [--seconds 8] [--hop-ssl no]
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

from backend_path_bench import rotated, trees
from imap_bench import first_logins
from imap_client import Credentials, Target, login_loop
from palomar.devcluster.cluster import LocalCluster
from palomar.devcluster.dovecot import raise_open_files_limit
from proctree import CpuMeter
from report import load_average, log

PATHS = ("hop", "direct")


def start_clusters(root: Path, old_src: Path, users: int, hop_tls: bool) -> dict[str, LocalCluster]:
    clusters = {}
    versions = {"old": ("env", f"PYTHONPATH={old_src}", sys.executable, "-m", "palomar"),
                "new": (sys.executable, "-m", "palomar")}
    for index, (version, command) in enumerate(versions.items()):
        for offset, path in enumerate(PATHS):
            key = f"{path} {version}"
            cluster = LocalCluster(root / key.replace(" ", "-"), backends_count=2, proxies_count=1,
                                   users_count=users, allow_cleartext=True, password_scheme="PLAIN",
                                   auth_failure_delay="0 secs", palomar_cmd=command, lb_ipv6="",
                                   host_offset=120 + 15 * (2 * index + offset), backend_path=path,
                                   hop_tls=hop_tls)
            log(f"starting {key}")
            cluster.start()
            clusters[key] = cluster
    return clusters


async def measure(clusters: dict[str, LocalCluster], rounds: int, seconds: float) -> None:
    targets = {k: Target(k, c.proxies[0].host, c.proxies[0].imap) for k, c in clusters.items()}
    users = {k: [Credentials(u.name, u.password) for u in c.users] for k, c in clusters.items()}
    for key in clusters:
        await first_logins(targets[key], users[key])
    cpu: dict[str, defaultdict[str, float]] = {k: defaultdict(float) for k in clusters}
    sessions = dict.fromkeys(clusters, 0)
    for round_ in range(rounds):
        for key in rotated(list(clusters), round_):
            meter = CpuMeter(trees(clusters[key])).start()
            result = await login_loop(targets[key], users[key], concurrency=50, duration=seconds, max_sessions=20000)
            spent = meter.stop()
            for role, value in spent.items():
                cpu[key][role] += value
            sessions[key] += result.sessions
            n = result.sessions or 1
            log(f"round {round_ + 1} {key}: " + ", ".join(f"{role} {value * 1000 / n:.2f}" for role, value in spent.items())
                + f" ms/login; {result.sessions} logins, {result.errors} errors {result.first_errors[:1]}; "
                  f"load {load_average()}")
    print("| cluster | proxy ms/login | backend service ms/login | palomar tier | Dovecot (control) | logins |")
    print("|---|---|---|---|---|---|")
    for key in clusters:
        n = sessions[key] or 1
        c = cpu[key]
        print(f"| {key} | {c['proxy'] * 1000 / n:.2f} | {c['backend service'] * 1000 / n:.2f} | "
              f"{(c['proxy'] + c['backend service']) * 1000 / n:.2f} | {c['dovecot'] * 1000 / n:.2f} | {sessions[key]} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="CPU per IMAP login, old tree against this one.")
    parser.add_argument("--old-src", type=Path, required=True, help="the src/ folder of the older tree")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=8.0, help="login load per cluster and round")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--hop-ssl", choices=("yes", "no"), default="yes",
                        help="cluster_hop_ssl: TLS on the hop and on the direct path's leg to Dovecot")
    args = parser.parse_args(argv)
    if not (args.old_src / "palomar" / "__init__.py").is_file():
        parser.error(f"--old-src {args.old_src}: no palomar package there")
    raise_open_files_limit()
    root = Path(tempfile.mkdtemp(prefix="palomar-loginab-"))
    os.chmod(root, 0o755)
    clusters: dict[str, LocalCluster] = {}
    try:
        clusters = start_clusters(root, args.old_src.resolve(), args.users, args.hop_ssl == "yes")
        asyncio.run(measure(clusters, args.rounds, args.seconds))
    finally:
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
