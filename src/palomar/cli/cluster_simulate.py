"""`palomar cluster simulate`: the controller's planners on the current GeoDB or a synthetic cluster.

Nothing is written: the world is copied into memory, a scenario is applied, and the same planning
pass the controller runs is repeated until nothing moves any more (see palomar.cluster.simulate
for what the simulation simplifies).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import click

from palomar.cli.cluster_context import ClusterContext, CommandError, pass_ctx
from palomar.cluster.features import FEATURES
from palomar.cluster.simulate import SCENARIOS, SIM_RESOURCE, World, distribution, scenario_events, synthetic
from palomar.controller.decide import ControllerRules
from palomar.controller.simulator import simulate as run_simulation
from palomar.geodb.repository import GeoDB

MOVING_FEATURES = tuple(f for f in FEATURES if f not in ("health", "group-size"))


async def world_from_geodb(db: GeoDB) -> World:
    """The GeoDB's sites, backends and groups; a group's users estimated as its backend's
    `user_count_approx` divided by the groups there (the GeoDB keeps no per-group count)."""
    sites = await db.site_list()
    backends = {b.id: b for b in await db.backend_list_all()}
    groups = {s.id: {g.name: g for g in await db.group_list(s.id)} for s in sites}
    per_backend: dict[Any, int] = {}
    for site_groups in groups.values():
        for g in site_groups.values():
            per_backend[g.backend_id] = per_backend.get(g.backend_id, 0) + 1
    sizes = {}
    for site_groups in groups.values():
        for g in site_groups.values():
            b = backends.get(g.backend_id) if g.backend_id else None
            users = (b.user_count_approx or 0) if b else 0
            sizes[g.name] = users // max(per_backend.get(g.backend_id, 1), 1)
    return World(sites, backends, groups, sizes, {s.id: True for s in sites})


def _duration(secs: float) -> str:
    hours, rest = divmod(int(secs), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@click.command("simulate")
@click.option("--users", type=click.IntRange(min=1), help="Synthetic cluster: users.")
@click.option("--backends", type=click.IntRange(min=1), help="Synthetic cluster: backends.")
@click.option("--sites", type=click.IntRange(min=1), help="Synthetic cluster: sites.")
@click.option("--groups", type=click.IntRange(min=1), help="Synthetic cluster: groups (default 100 per backend).")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="none", show_default=True)
@click.option("--features", default=",".join(MOVING_FEATURES), show_default=True,
              help="Comma-separated features that are on.")
@click.option("--step", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds between planning passes.")
@click.option("--hours", type=click.FloatRange(min=0.1), default=168.0, show_default=True,
              help="Give up after this much simulated time.")
@click.option("--restarts", type=click.IntRange(min=1), default=4, show_default=True,
              help="rolling-restart: backends restarted, one every 15 minutes, each down 5 minutes.")
@click.option("--show-moves", type=click.IntRange(min=0), default=10, show_default=True)
@pass_ctx
def simulate(ctx: ClusterContext, users: int | None, backends: int | None, sites: int | None,
             groups: int | None, scenario: str, features: str, step: float, hours: float, restarts: int,
             show_moves: int) -> None:
    """Run the controller's planners on the GeoDB (or a synthetic cluster) under a scenario."""
    chosen = tuple(f.strip() for f in features.split(",") if f.strip())
    unknown = [f for f in chosen if f not in MOVING_FEATURES]
    if unknown:
        raise CommandError(f"unknown feature(s) {', '.join(unknown)} (simulated: {', '.join(MOVING_FEATURES)})")
    start = time.time()
    synthetic_args = (users, backends, sites)
    if any(a is not None for a in synthetic_args):
        if None in synthetic_args:
            raise CommandError("a synthetic cluster needs --users, --backends and --sites")
        assert users is not None and backends is not None and sites is not None
        try:
            world = synthetic(users, groups or 100 * backends, backends, sites, start)
        except ValueError as err:
            raise CommandError(str(err)) from None
        source = "synthetic"
    else:
        world = ctx.run(world_from_geodb)
        source = "GeoDB snapshot"
        if not world.sites:
            raise CommandError("the GeoDB has no sites to simulate")
    rules = ControllerRules()
    if os.path.exists(ctx.config_path):
        from palomar.controller.service import rules_from_config

        rules = rules_from_config(ctx.config())
    rules = replace(rules, balance=replace(rules.balance, resources=(SIM_RESOURCE,)))
    total_users = sum(world.sizes.values())
    total_groups = sum(len(g) for g in world.groups.values())
    total_backends = len(world.backends)  # before the scenario (backend-added adds one)
    events = scenario_events(scenario, world, restarts=restarts)
    began = time.monotonic()
    result = run_simulation(world, events, rules, chosen, start=start, step=step, horizon=hours * 3600)
    elapsed = time.monotonic() - began
    by_feature: dict[str, int] = {}
    for _, m, _ in result.moves:
        by_feature[m.feature] = by_feature.get(m.feature, 0) + 1
    hosts = {b.id: b.host for b in world.backends.values()}
    sites_out = []
    for site in world.sites:
        rows = distribution(world, site.id)
        serving = [r for r in rows if r[0].online and r[0].load_factor > 0]
        worst = max((abs(count - share) for _, count, _, share in serving), default=0.0)
        sites_out.append({
            "site": site.name, "backends": len(rows),
            "groups_min": min((r[1] for r in serving), default=0), "groups_max": max((r[1] for r in serving), default=0),
            "users_min": min((r[2] for r in serving), default=0), "users_max": max((r[2] for r in serving), default=0),
            "largest_distance_from_share": round(worst, 2),
            "force_move": site.force_move.percentage if site.force_move else None,
        })
    record = {
        "source": source, "users": total_users, "groups": total_groups, "backends": total_backends,
        "sites": len(world.sites), "scenario": scenario, "features": list(chosen), "moves": len(result.moves),
        "moves_by_feature": by_feature, "site_ramps": len(result.site_ramps), "passes": result.ticks,
        "converged_after_secs": result.converged_after, "wall_secs": round(elapsed, 2),
        "first_moves": [{"at_secs": t, "feature": m.feature, "group": m.subject,
                         "from": hosts.get(m.source) if m.source else None, "to": hosts.get(m.dest),
                         "reason": reason} for t, m, reason in result.moves[:show_moves]],
        "distribution": sites_out,
    }
    if ctx.json_output:
        ctx.emit_record(record)
        return
    lines = [f"world: {total_users} users, {total_groups} groups, {total_backends} backends, "
             f"{len(world.sites)} sites ({source})",
             f"scenario: {scenario}; features on: {' '.join(chosen) or '(none)'}; a pass every {step:g}s",
             f"moves: {len(result.moves)}" + (f" ({', '.join(f'{k} {v}' for k, v in by_feature.items())})"
                                              if by_feature else "") + f"; site ramp steps: {len(result.site_ramps)}",
             ("converged after " + _duration(result.converged_after) if result.converged_after is not None
              else f"not converged within {hours:g}h") + f" ({result.ticks} passes, {elapsed:.1f}s to simulate)"]
    for t, m, reason in result.moves[:show_moves]:
        lines.append(f"  +{_duration(t):>8} {m.feature:<9} {m.subject} {hosts.get(m.source) if m.source else '-'}"
                     f" -> {hosts.get(m.dest)}: {reason}")
    for t, reason in result.site_ramps[:show_moves]:
        lines.append(f"  +{_duration(t):>8} site-failover {reason}")
    lines.append("distribution (online backends with load factor > 0):")
    for s in sites_out:
        lines.append(f"  {s['site']}: {s['backends']} backends, groups per backend {s['groups_min']}..{s['groups_max']}"
                     f", users {s['users_min']}..{s['users_max']}, furthest from its share by "
                     f"{s['largest_distance_from_share']} groups"
                     + (f", force-move {s['force_move']}%" if s["force_move"] is not None else ""))
    click.echo("\n".join(lines))
