"""Where one sequential IMAP session's wall time goes (issue 11), an older source tree against this one.

Two LocalClusters (one backend, one proxy each) run at once on one loopback: one runs the services
of `--old-src` (a `src` directory, e.g. `git archive <commit> src | tar -x -C /tmp/old`), the other
this tree's. One client runs sessions (connect + greeting, LOGIN, SELECT INBOX, LOGOUT + close) on
the old cluster, the new one and the new cluster's Dovecot directly, one at a time, the order
rotating every round, so load from other work hits all three alike: on a shared machine this is
what keeps a before/after comparison meaningful. Prints the median of each step and the session
p50/p99 per target; nothing is written to docs/.

    .venv/bin/python bench/session_steps_ab.py --old-src /tmp/old/src [--rounds 300] [--backend-path direct]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from imap_bench import first_logins
from imap_client import Connection, Credentials, Target
from palomar.devcluster.cluster import LocalCluster
from report import load_average, log, median, percentile, table

STEPS = ("connect + greeting", "LOGIN", "SELECT INBOX", "LOGOUT + close")


async def session_steps(target: Target, creds: Credentials) -> list[float]:
    """Milliseconds of each of STEPS."""
    marks = [time.perf_counter()]
    conn = await Connection.open(target)
    marks.append(time.perf_counter())
    await conn.login(target, creds)
    marks.append(time.perf_counter())
    await conn.command(b"SELECT INBOX")
    marks.append(time.perf_counter())
    await conn.logout()
    marks.append(time.perf_counter())
    return [(b - a) * 1000 for a, b in zip(marks, marks[1:], strict=False)]


def start_cluster(root: Path, name: str, offset: int, backend_path: str, src: str | None) -> LocalCluster:
    """A cluster whose services import palomar from `src` (None: this tree)."""
    cluster = LocalCluster(root / name, backends_count=1, proxies_count=1, users_count=40, allow_cleartext=True,
                           password_scheme="PLAIN", auth_failure_delay="0 secs", backend_path=backend_path,
                           host_offset=offset, lb_ipv6="")
    saved = os.environ.get("PYTHONPATH")
    if src is not None:
        os.environ["PYTHONPATH"] = src  # the services are spawned with this environment
    try:
        log(f"starting the {name} cluster")
        cluster.start()
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return cluster


async def measure(targets: dict[str, Target], users: dict[str, list[Credentials]], rounds: int
                  ) -> dict[str, list[list[float]]]:
    samples: dict[str, list[list[float]]] = {key: [] for key in targets}
    keys = list(targets)
    for round_ in range(rounds):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            async with asyncio.timeout(30):
                samples[key].append(await session_steps(targets[key], users[key][round_ % len(users[key])]))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Per-step session latency: an older source tree vs this one.")
    parser.add_argument("--old-src", required=True, type=Path, help="the older tree's src directory")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--backend-path", choices=("hop", "direct"), default="hop")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("session_steps_ab: needs root (Dovecot backends, loopback addresses)", file=sys.stderr)
        return 2
    if not (args.old_src / "palomar" / "__init__.py").exists():
        print(f"session_steps_ab: {args.old_src} holds no palomar package", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="palomar-steps-"))
    root.chmod(0o755)  # Dovecot's unprivileged processes must reach the mail store below
    clusters: dict[str, LocalCluster] = {}
    load_before = load_average()
    try:
        clusters["old"] = start_cluster(root, "old", 120, args.backend_path, str(args.old_src.resolve()))
        clusters["new"] = start_cluster(root, "new", 135, args.backend_path, None)
        targets: dict[str, Target] = {}
        users: dict[str, list[Credentials]] = {}
        for key, cluster in clusters.items():
            proxy = cluster.proxies[0]
            users[key] = [Credentials(u.name, u.password) for u in cluster.users]
            targets[key] = Target(f"palomar, {key} tree", proxy.host, proxy.imap)
            asyncio.run(first_logins(targets[key], users[key]))
        params = clusters["new"].backends[0].dovecot.params
        targets["direct"] = Target("Dovecot direct", params.listen, params.imap_port, params.master_user,
                                   params.master_password)
        users["direct"] = users["new"]
        samples = asyncio.run(measure(targets, users, args.rounds))
    finally:
        for cluster in clusters.values():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    direct = [sum(s) for s in samples["direct"]]
    rows = []
    for key, target in targets.items():
        sessions = [sum(s) for s in samples[key]]
        steps = [median([s[i] for s in samples[key]]) for i in range(len(STEPS))]
        added = "–" if key == "direct" else f"+{median(sessions) - median(direct):.2f}"
        rows.append([target.name, *(f"{v:.2f}" for v in steps),
                     f"{median(sessions):.2f} / {percentile(sessions, 99):.2f}", added])
    print(f"{args.rounds} rounds, cluster_backend_path = {args.backend_path}, load average {load_before} before, "
          f"{load_average()} after; medians in ms")
    print(table(["target", *STEPS, "session p50 / p99", "added p50"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
