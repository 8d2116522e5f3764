"""What-if simulation: the controller's own planners run on a snapshot under a scenario. Pure.

`palomar cluster simulate` builds a `World` (from the GeoDB, or synthetic), applies a scenario
(backend down, backend added, site lost, load factor changed, rolling restart), then runs the
controller's planning pass every `step` seconds of simulated time with the same `decide.plan`
the controller runs, carrying out every planned move at once. It reports the moves, the final
distribution and when the last move happened (convergence).

Simplifications, so the numbers are read right: a requested group move completes at once (a
busy cluster accesses every group within seconds); when a backend goes offline every one of its
groups fails over at once, as the proxies do for groups whose users log in; a backend's load is
its users per load-factor point (the `dovecot_sessions` resource), so balance and failback pull
the same way; group-size is not simulated (synthetic groups are even).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from uuid import UUID

from palomar.cluster.force_move import rendezvous_backend
from palomar.cluster.model import NO_ID, Backend, Group, Setting, Site
from palomar.cluster.planning import LoadSample, MoveRecord, group_counts

SCENARIOS = ("none", "backend-down", "backend-added", "site-lost", "load-factor-changed", "rolling-restart")
SIM_RESOURCE = "dovecot_sessions"


@dataclass
class World:
    """Everything the simulation moves: sites, their backends and groups, users per group."""

    sites: list[Site]
    backends: dict[UUID, Backend]
    groups: dict[UUID, dict[str, Group]]
    """Per site, by name."""
    sizes: dict[str, int]
    """Users per group name."""
    reachable: dict[UUID, bool] = field(default_factory=dict)
    """Per site: reachable from the others (site-lost sets one to False)."""

    def site_backends(self, site_id: UUID) -> tuple[Backend, ...]:
        return tuple(sorted((b for b in self.backends.values() if b.site_id == site_id), key=lambda b: b.host))

    def site_groups(self, site_id: UUID) -> tuple[Group, ...]:
        return tuple(self.groups.get(site_id, {}).values())


def _uuid(kind: int, n: int) -> UUID:
    return UUID(int=(kind << 64) | n)


def synthetic(users: int, groups: int, backends: int, sites: int, now: float) -> World:
    """Sites of equal size; groups round-robin over their site's backends; users spread evenly."""
    if min(users, groups, backends, sites) < 1 or backends < sites or groups < backends:
        raise ValueError("need users, groups, backends, sites >= 1, backends >= sites and groups >= backends")
    site_list = [Site(_uuid(1, s), f"site{s + 1}") for s in range(sites)]
    changed = int((now - 30 * 86_400) * 1_000_000)  # a month-old cluster: nothing is "recent"
    all_backends: dict[UUID, Backend] = {}
    per_site: list[list[Backend]] = [[] for _ in site_list]
    for n in range(backends):
        site = site_list[n % sites]
        b = Backend(_uuid(2, n), site.id, f"b{n + 1:04d}.{site.name}", status="online",
                    status_reason="admin", status_changed_us=changed)
        all_backends[b.id] = b
        per_site[n % sites].append(b)
    all_groups: dict[UUID, dict[str, Group]] = {site.id: {} for site in site_list}
    sizes: dict[str, int] = {}
    base, extra = divmod(users, groups)
    for n in range(groups):
        s = n % sites
        owners = per_site[s]
        name = f"default-{n + 1}"
        owner = owners[(n // sites) % len(owners)]
        all_groups[site_list[s].id][name] = Group(site_list[s].id, name, backend_id=owner.id,
                                                    backend_changed_us=changed)
        sizes[name] = base + (1 if n < extra else 0)
    return World(site_list, all_backends, all_groups, sizes, {s.id: True for s in site_list})


@dataclass
class SimResult:
    moves: list[tuple[float, MoveRecord, str]] = field(default_factory=list)
    """(simulated seconds since the scenario started, the move, its reason)."""
    site_ramps: list[tuple[float, str]] = field(default_factory=list)
    converged_after: float | None = None
    """Seconds from the scenario to the last move; None when moves were still going at the horizon."""
    ticks: int = 0


def fail_over(world: World, backend_id: UUID, now: float) -> None:
    """Every group of a backend that went offline moves to another online backend of its site, as
    routing's failover does (rendezvous over the online backends, weighted by load factor)."""
    dead = world.backends[backend_id]
    online = [b for b in world.site_backends(dead.site_id) if b.online and b.id != backend_id]
    stamp = int(now * 1_000_000)
    groups = world.groups[dead.site_id]
    for name, g in list(groups.items()):
        if g.backend_id == backend_id:
            target = rendezvous_backend(g.name, online)
            if target is not None:
                groups[name] = replace(g, backend_id=target.id, alt_backend_id=None, moving=None,
                                            backend_changed_us=stamp)


def set_status(world: World, backend_id: UUID, status: str, now: float) -> None:
    world.backends[backend_id] = replace(world.backends[backend_id], status=status,
                                         status_changed_us=int(now * 1_000_000))
    if status == "offline":
        fail_over(world, backend_id, now)


def load_samples(world: World, site_id: UUID, now: float) -> dict[UUID, list[LoadSample]]:
    """The simulated load: each backend's users, as its `dovecot_sessions` gauge."""
    users: dict[UUID, float] = {b.id: 0.0 for b in world.site_backends(site_id)}
    for g in world.site_groups(site_id):
        if g.backend_id in users:
            users[g.backend_id] += world.sizes.get(g.name, 0)
    return {b: [LoadSample(now, {SIM_RESOURCE: v})] for b, v in users.items()}


Event = tuple[float, Callable[[World, float], None]]


def scenario_events(name: str, world: World, *, restart_secs: float = 300.0, spacing: float = 900.0,
                    restarts: int = 4, seed: int = 1) -> list[Event]:
    """The scenario as timed changes to the world (seconds after the start)."""
    rng = random.Random(seed)
    first_site = world.sites[0]
    backends = world.site_backends(first_site.id)
    victim = backends[rng.randrange(len(backends))]
    if name == "none":
        return []
    if name == "backend-down":
        return [(0.0, lambda w, t: set_status(w, victim.id, "offline", t))]
    if name == "backend-added":
        def add(w: World, t: float) -> None:
            n = len(w.backends)
            b = Backend(_uuid(2, 10_000_000 + n), first_site.id, f"new{n}.{first_site.name}", status="online",
                        status_reason="admin", status_changed_us=int(t * 1_000_000))
            w.backends[b.id] = b
        return [(0.0, add)]
    # (a new backend's groups come from failback: it is "returning" from the moment it is online)
    if name == "load-factor-changed":
        return [(0.0, lambda w, t: w.backends.__setitem__(victim.id, replace(w.backends[victim.id], load_factor=50)))]
    if name == "site-lost":
        lost = world.sites[-1]
        return [(0.0, lambda w, t: w.reachable.__setitem__(lost.id, False)),
                (6 * 3600.0, lambda w, t: w.reachable.__setitem__(lost.id, True))]
    if name == "rolling-restart":
        events: list[Event] = []
        for i, b in enumerate(backends[:restarts]):
            start = i * spacing
            events.append((start, lambda w, t, b=b: set_status(w, b.id, "offline", t)))
            events.append((start + restart_secs, lambda w, t, b=b: set_status(w, b.id, "online", t)))
        return events
    raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")


def feature_settings(features: tuple[str, ...]) -> tuple[Setting, ...]:
    return tuple(Setting("controller", f, "on", NO_ID, NO_ID) for f in features)


def distribution(world: World, site_id: UUID) -> list[tuple[Backend, int, int, float]]:
    """(backend, groups, users, load-factor share of the groups) for every backend of a site."""
    backends = world.site_backends(site_id)
    groups = world.site_groups(site_id)
    counts = group_counts(groups)
    users: dict[UUID, int] = {}
    for g in groups:
        if g.backend_id is not None:
            users[g.backend_id] = users.get(g.backend_id, 0) + world.sizes.get(g.name, 0)
    serving = [b for b in backends if b.online and b.load_factor > 0]
    weight = sum(b.load_factor for b in serving) or 1
    total = sum(counts.values())
    return [(b, counts.get(b.id, 0), users.get(b.id, 0),
             total * b.load_factor / weight if b in serving else 0.0) for b in backends]
