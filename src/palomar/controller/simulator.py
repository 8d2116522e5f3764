"""Runs the controller's planning pass (`decide.plan`) over a simulated world (cluster.simulate).

The same function the controller calls every tick, fed a `Snapshot` and a `Memory` built from
the world instead of the GeoDB and the history file. A site is planned while something there
can still change: from a scenario event until nothing moved there for longer than any rule waits
(the residence times, an hour of rate limit); a site at rest is skipped, which keeps a
1,000-backend simulation to seconds.
"""

from __future__ import annotations

import math
from dataclasses import replace
from uuid import UUID

from palomar.cluster.model import ForceMove, Reachability
from palomar.cluster.planning import HOUR, MoveRecord
from palomar.cluster.simulate import Event, SimResult, World, feature_settings, load_samples
from palomar.cluster.site_failover import SiteLink
from palomar.controller.decide import ControllerRules, Memory, MoveGroup, RampSite, Snapshot, plan


def plan_site(world: World, site_id: UUID, rules: ControllerRules, features: tuple[str, ...], now: float,
              moves: tuple[MoveRecord, ...] = (), links: dict[UUID, SiteLink] | None = None,
              steps: dict[UUID, float] | None = None):
    """One controller pass for one site of the world: (actions, held)."""
    site = next(s for s in world.sites if s.id == site_id)
    backends = world.site_backends(site_id)
    reach = tuple(Reachability(site_id, s.id, world.reachable.get(s.id, True)) for s in world.sites if s.id != site_id)
    snapshot = Snapshot(site, backends, (), feature_settings(features), True, now,
                        groups=world.site_groups(site_id), sites=tuple(world.sites), reachability=reach)
    memory = Memory(samples=load_samples(world, site_id, now), seen={b.id: math.inf for b in backends},  # type: ignore[misc]
                    moves=moves, site_links=links or {}, site_steps=steps or {})
    return plan(snapshot, rules, memory)


def simulate(world: World, events: list[Event], rules: ControllerRules, features: tuple[str, ...], *,
             start: float, step: float = 60.0, horizon: float = 7 * 86_400.0) -> SimResult:
    result = SimResult()
    pending = sorted(events, key=lambda e: e[0])
    active = {s.id for s in world.sites}
    recent: dict[UUID, list[MoveRecord]] = {s.id: [] for s in world.sites}
    link_since: dict[UUID, tuple[bool, float]] = {s.id: (world.reachable.get(s.id, True), start)
                                                  for s in world.sites}
    steps: dict[UUID, dict[UUID, float]] = {s.id: {} for s in world.sites}
    last_activity: float | None = None
    # a site rests once nothing moved there for longer than any rule waits (residence, an hour's rate)
    quiet = max(rules.balance.min_residence, rules.failback.min_residence, HOUR) + step
    site_since: dict[UUID, float] = {}
    t = 0.0
    while t <= horizon:
        now = start + t
        while pending and pending[0][0] <= t:
            _, change = pending.pop(0)
            change(world, now)
            active = {s.id for s in world.sites}
            site_since = dict.fromkeys(active, t)
        for site_id, (was, _) in list(link_since.items()):
            if world.reachable.get(site_id, True) != was:
                link_since[site_id] = (not was, now)
        links = {sid: SiteLink(flag, since) for sid, (flag, since) in link_since.items()}
        for site in list(world.sites):
            if site.id not in active or not world.reachable.get(site.id, True):
                continue  # at rest, or cut off (its controller cannot act)
            recent[site.id] = [m for m in recent[site.id] if now - m.at < HOUR]
            actions, _held = plan_site(world, site.id, rules, features, now, tuple(recent[site.id]),
                                      {k: v for k, v in links.items() if k != site.id}, steps[site.id])
            for action in actions:
                if isinstance(action, MoveGroup):
                    _move(world, site.id, action, now, recent, result, t)
                elif isinstance(action, RampSite):
                    _ramp(world, action, now, steps[site.id], result, t)
            if actions:
                last_activity = t
                site_since[site.id] = t
            elif t - site_since.get(site.id, 0.0) > quiet and not _site_failover_running(world):
                active.discard(site.id)
        result.ticks += 1
        if not pending and not active:
            break
        t += step
    converged = not pending and not active
    result.converged_after = (last_activity or 0.0) if converged else None
    return result


def _site_failover_running(world: World) -> bool:
    """A site is lost or still force-moved: site-failover's timers run without a move every pass."""
    return any(not world.reachable.get(s.id, True) or s.force_move is not None for s in world.sites)


def _move(world: World, site_id: UUID, action: MoveGroup, now: float, recent: dict[UUID, list[MoveRecord]],
          result: SimResult, t: float) -> None:
    m = action.move
    groups = world.groups[site_id]
    groups[m.group] = replace(groups[m.group], backend_id=m.dest, alt_backend_id=None, moving=None,
                              backend_changed_us=int(now * 1_000_000))
    record = MoveRecord(action.feature, m.group, m.source, m.dest, now)
    recent[site_id].append(record)
    result.moves.append((t, record, m.reason))


def _ramp(world: World, action: RampSite, now: float, steps: dict[UUID, float], result: SimResult,
          t: float) -> None:
    a = action.action
    index = next(i for i, s in enumerate(world.sites) if s.id == a.site_id)
    site = world.sites[index]
    if a.kind == "force_move":
        assert a.move_id is not None
        site = replace(site, force_move=ForceMove(a.move_id, a.percentage, a.dest))
    elif a.kind == "recover":
        site = replace(site, recover_id=a.move_id, recover_percentage=a.percentage)
    else:
        site = replace(site, force_move=None, recover_id=None, recover_percentage=None)
    world.sites[index] = site
    steps[a.site_id] = now
    result.site_ramps.append((t, a.reason))
