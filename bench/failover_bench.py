"""Backend failover benchmark (issue 6): how long a dead backend's users wait.

One LocalCluster (HAProxy, two `palomar proxy`, two `palomar backend`, two Dovecot CE). Each
repetition logs every user in (the cluster must be healthy), SIGKILLs the Dovecot process tree,
or the `palomar backend` process, of the backend serving the most users, and then logs that backend's users in through
HAProxy one after the other until one succeeds. Measured: time from the kill to the first
successful (re-routed) login, the failed logins in between, and when the GeoDB status became
offline (its write time). Then the backend is revived and set online for the next round.
Results go to the `## Backend failover (issue 6)` section of docs/benchmarks.md only.

    .venv/bin/python bench/failover_bench.py [--reps 5] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from palomar.devcluster.cluster import SITE, BackendNode, LocalCluster
from palomar.geodb import open_engine
from palomar.geodb.repository import GeoDB
from report import log, machine_rows, median, table, write_section

HEADING = "Backend failover (issue 6)"
GIVE_UP = 60.0
"""Seconds after the kill without a successful login that count as "never"."""


@dataclass
class Round:
    scenario: str
    to_first_ok: float | None = None
    failed_logins: int = 0
    to_offline: float | None = None
    errors: list[str] = field(default_factory=list)


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def try_login(cluster: LocalCluster, user: str, password: str) -> str:
    try:
        imap = imaplib.IMAP4_SSL(cluster.lb_host, cluster.lb_imaps, ssl_context=tls_context(), timeout=30)
    except OSError as exc:
        return f"connect: {exc}"
    try:
        imap.login(user, password)
    except imaplib.IMAP4.error as exc:
        imap.shutdown()
        return str(exc)
    imap.logout()
    return "OK"


def geodb(cluster: LocalCluster, action):
    async def main():
        engine = open_engine("sqlite", path=str(cluster.geodb_path))
        await engine.open()
        try:
            db = GeoDB(engine)
            site = await db.site_get_by_name(SITE)
            return await action(db, site)
        finally:
            await engine.close()

    return asyncio.run(main())


def placement(cluster: LocalCluster) -> dict[str, str | None]:
    async def action(db, site):
        hosts = {b.id: b.host for b in await db.backend_list(site.id)}
        groups = {g.name: hosts.get(g.backend_id) for g in await db.group_list(site.id)}
        return {u.username: groups.get(u.group_name) for u in await db.user_list_all()}
    return geodb(cluster, action)


def status_changed(cluster: LocalCluster, host: str) -> tuple[str, float | None]:
    async def action(db, site):
        backend = next(b for b in await db.backend_list(site.id) if b.host == host)
        changed = backend.status_changed_us / 1_000_000 if backend.status_changed_us else None
        return backend.status, changed
    return geodb(cluster, action)


def one_round(cluster: LocalCluster, scenario: str, kill: Callable[[BackendNode], None],
              revive: Callable[[BackendNode], None]) -> Round:
    for user in cluster.users:
        result = try_login(cluster, user.name, user.password)
        if result != "OK":
            raise RuntimeError(f"cluster not healthy before the round: {user.name}: {result}")
    where = placement(cluster)
    counts = {b.host: sum(1 for h in where.values() if h == b.host) for b in cluster.backends}
    victim = next(b for b in cluster.backends if b.host == max(counts, key=lambda h: counts[h]))
    users = [u for u in cluster.users if where[u.name] == victim.host]
    outcome = Round(scenario)
    killed_wall, killed = time.time(), time.monotonic()
    kill(victim)
    attempt = 0
    while time.monotonic() - killed < GIVE_UP:
        user = users[attempt % len(users)]
        attempt += 1
        result = try_login(cluster, user.name, user.password)
        if result == "OK":
            outcome.to_first_ok = time.monotonic() - killed
            break
        outcome.failed_logins += 1
        if len(outcome.errors) < 3:
            outcome.errors.append(result)
    status, changed = status_changed(cluster, victim.host)
    if status == "offline" and changed is not None:
        outcome.to_offline = max(0.0, changed - killed_wall)
    revive(victim)
    cluster.cluster("backend", "update", "--status", "online", victim.host)
    return outcome


def ms(value: float | None) -> str:
    return "never" if value is None else f"{value * 1000:.0f} ms"


def render(rounds: list[Round], reps: int) -> str:
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in rounds):
        mine = [r for r in rounds if r.scenario == scenario]
        firsts = [r.to_first_ok for r in mine if r.to_first_ok is not None]
        offline = [r.to_offline for r in mine if r.to_offline is not None]
        rows.append((
            scenario, len(mine),
            ms(median(firsts)) if firsts else "never", ms(max(firsts)) if firsts else "never",
            ms(median(offline)) if offline else "never",
            sum(r.failed_logins for r in mine), max(r.failed_logins for r in mine),
        ))
    errors = [e for r in rounds for e in r.errors]
    error_note = ("\nFailed logins answered: " + "; ".join(f"`{e}`" for e in errors[:4]) + "\n") if errors else ""
    return f"""\
`bench/failover_bench.py --reps {reps}`: a client logs the users of one backend in through HAProxy, one
login after the other, right after that backend is killed with SIGKILL. "First success" is the time
from the kill to the first login that succeeded (on the alternate backend); "offline" is when a
proxy's `offline` status write landed in the GeoDB (its write time). Default settings:
`cluster_proxy_offline_failures = 3`, `cluster_proxy_offline_window = 10 secs`, probes with the
test login (`cluster_proxy_probe_timeout = 5 secs`).

{table(["killed", "rounds", "first success (median)", "first success (max)", "offline (median)",
        "failed logins (total)", "failed logins (max per round)"], rows)}
{error_note}
How it goes: the first login that reaches the dead backend fails at the hop (the backend's
Dovecot refuses connections: `proxy_dest_remote_failure`; the `palomar backend` is gone:
`proxy_dest_connect_failed`). That proxy probes the backend with its test login at once; the
probe fails the same way, which confirms the failure, so the proxy sets the backend offline,
drops its cached view of the site, routes the same login again and the group fails over to its
`alt_backend_id`. The client sees a login that took a few milliseconds longer. A client sees
`NO [UNAVAILABLE]` only when the probe cannot confirm (for instance a backend that hangs rather
than refuses: then the probe timeout, or three failures within the window, decide).

Machine:

{table(["", ""], machine_rows())}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Backend failover benchmark: time from SIGKILL to re-routed login.")
    parser.add_argument("--reps", type=int, default=5, help="rounds per scenario (default 5)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="palomar-failover-bench-"))
    root.chmod(0o755)
    cluster = LocalCluster(root / "cluster", users_count=16, auth_failure_delay="100 ms", password_scheme="PLAIN",
                           stats_interval="1 secs")
    rounds: list[Round] = []
    try:
        log("starting the cluster")
        cluster.start()
        scenarios = (
            ("Dovecot (whole process tree)", cluster.kill_dovecot, lambda n: n.dovecot.start()),
            ("palomar backend service", cluster.kill_backend_service, cluster.restart_backend),
        )
        for name, kill, revive in scenarios:
            for rep in range(args.reps):
                outcome = one_round(cluster, name, kill, revive)
                log(f"{name} #{rep + 1}: first success after {ms(outcome.to_first_ok)}, "
                    f"{outcome.failed_logins} failed logins, offline after {ms(outcome.to_offline)}")
                rounds.append(outcome)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
    write_section(args.out, HEADING, render(rounds, args.reps))
    log(f"wrote '## {HEADING}' in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
