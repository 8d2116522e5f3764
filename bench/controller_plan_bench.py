"""Controller planning at scale (issue 13): one planning pass of every site of a 10M-user cluster.

A synthetic cluster (`palomar.cluster.simulate.synthetic`): `--users` users in `--groups` groups on
`--backends` backends in `--sites` sites. To give every planner work, in each site one backend
has just come back online with no groups (failback fills it), one backend went offline an hour
ago with its groups still assigned (evacuate moves them), and every backend has a full balance
window of load samples (`controller_balance_window` samples of the five default resources, with
one backend hot). Timed: `controller.decide.plan` (health, evacuate, failback, balance and
site-failover, all `on`) for every site, as the controllers of all sites together run it per
pass. Not timed: building the world (the controller reads it from the GeoDB).
Results replace the `## Controller planning at scale (issue 13)` section of docs/benchmarks.md.

    .venv/bin/python bench/controller_plan_bench.py                 # 10M users, about 10 s
    .venv/bin/python bench/controller_plan_bench.py --out /tmp/b.md --repeat 3
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

from palomar.cluster.balance import BalanceSettings
from palomar.cluster.planning import LoadSample
from palomar.cluster.simulate import World, feature_settings, synthetic
from palomar.controller.decide import ControllerRules, Memory, Snapshot, plan
from report import load_average, log, machine_rows, median, table, write_section

HEADING = "Controller planning at scale (issue 13)"
FEATURES = ("health", "evacuate", "failback", "balance", "site-failover")


def prepare(world: World, now: float, window: int) -> list[tuple[Snapshot, Memory]]:
    """Per site: one backend just back (emptied), one offline for an hour, load samples for all."""
    passes = []
    resources = BalanceSettings().resources
    for site in world.sites:
        backends = world.site_backends(site.id)
        back, dead = backends[0], backends[1]
        world.backends[back.id] = replace(back, status_changed_us=int((now - 60) * 1_000_000))
        world.backends[dead.id] = replace(dead, status="offline", status_reason="proxy p: down",
                                          status_changed_us=int((now - 3600) * 1_000_000))
        groups = world.groups[site.id]
        others = [b for b in backends if b.id not in (back.id, dead.id)]
        for i, (name, g) in enumerate(list(groups.items())):
            if g.backend_id == back.id:
                groups[name] = replace(g, backend_id=others[i % len(others)].id)
        samples = {}
        for n, b in enumerate(backends):
            hot = 2.0 if n == 2 else 1.0
            samples[b.id] = [LoadSample(now - 30 * (window - k), {r: hot * (30 + (n * 7 + k) % 41) for r in resources})
                             for k in range(window)]
        snapshot = Snapshot(site, world.site_backends(site.id), (), feature_settings(FEATURES), True, now,
                            groups=world.site_groups(site.id), sites=tuple(world.sites))
        memory = Memory(samples=samples, seen={b.id: 10**9 for b in backends})
        passes.append((snapshot, memory))
    return passes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000_000)
    parser.add_argument("--groups", type=int, default=100_000)
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--sites", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = parser.parse_args()
    load_before = load_average()
    now = time.time()
    rules = ControllerRules(failback=replace(ControllerRules().failback, min_residence=0))
    log(f"building {args.users} users / {args.groups} groups / {args.backends} backends / {args.sites} sites")
    started = time.monotonic()
    world = synthetic(args.users, args.groups, args.backends, args.sites, now - 86_400)
    passes = prepare(world, now, rules.balance.window)
    build = time.monotonic() - started
    timings, moves, actions_by = [], 0, {}
    for round_ in range(args.repeat):
        started = time.perf_counter()
        results = [plan(snapshot, rules, memory) for snapshot, memory in passes]
        timings.append(time.perf_counter() - started)
        moves = sum(len(actions) for actions, _ in results)
        actions_by = {}
        for actions, _ in results:
            for a in actions:
                actions_by[a.feature] = actions_by.get(a.feature, 0) + 1
        log(f"pass {round_ + 1}: {timings[-1]:.3f} s, {moves} actions")
    per_site = [len(world.site_groups(s.id)) for s in world.sites]
    body = "\n\n".join([
        f"`bench/controller_plan_bench.py`: one planning pass of every site's controller (health, evacuate,"
        f" failback, balance, site-failover, all on) over a synthetic cluster of {args.users:,} users,"
        f" {args.groups:,} groups ({min(per_site):,} per site), {args.backends:,} backends and {args.sites} sites;"
        " in each site one backend just came back empty, one has been offline for an hour, and every backend"
        f" has a full window of load samples ({rules.balance.window} samples x 5 resources). Building the world"
        f" took {build:.1f} s (not timed: a controller reads it from the GeoDB).",
        table(["", "value"], [
            ("passes timed", args.repeat),
            ("median pass, all sites", f"{median(timings):.3f} s"),
            ("slowest pass, all sites", f"{max(timings):.3f} s"),
            ("median per site", f"{median(timings) / args.sites * 1000:.0f} ms"),
            ("actions planned per pass", f"{moves} ({', '.join(f'{k} {v}' for k, v in sorted(actions_by.items()))})"),
            ("target", "< 1 s for the whole cluster: " + ("met" if max(timings) < 1 else "missed")),
        ]),
        "Machine:",
        table(["", ""], [*machine_rows(), ("load average before / after", f"{load_before} / {load_average()}")]),
        "The pass is linear in the groups of a site: it looks at every group twice (the groups per backend by"
        " placement and the index of groups by backend, both built once per pass and shared by the planners,"
        " and updated, not rebuilt, after each feature's moves); balance adds backends x window x resources."
        " The machine is shared with other work, so the slowest pass is the figure to compare with the target.",
    ])
    write_section(args.out, HEADING, body)
    print(f"median {median(timings):.3f} s, max {max(timings):.3f} s -> {args.out}")
    return 0 if not math.isnan(median(timings)) else 1


if __name__ == "__main__":
    sys.exit(main())
