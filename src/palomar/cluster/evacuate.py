"""The `evacuate` feature: a backend offline too long loses its groups for good. Pure.

While a backend is offline, the proxies send its groups' users to each group's alternate on
their next login; a group nobody logs in to stays assigned to the dead backend, and every
group's placement still says "temporarily elsewhere". After `after` seconds offline the outage
is not a restart any more: each group still on that backend is moved (the group-move machinery;
a move whose source is offline finishes at once) to the target holding the fewest groups for its
load factor, at most `groups_per_hour`, evenly spaced. See docs/design/controller.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from palomar.cluster.planning import GroupMove, Plan, PlanInput, rate_budget, targets

FEATURE = "evacuate"


@dataclass(frozen=True)
class EvacuateSettings:
    after: float = 600.0
    groups_per_hour: int = 600


def plan_evacuate(inp: PlanInput, s: EvacuateSettings) -> Plan:
    dead = {b.id: b for b in inp.backends
            if b.status == "offline" and inp.now - (b.status_changed_us or 0) / 1_000_000 >= s.after}
    if not dead:
        return Plan([], [])
    stranded = sorted((g for b in dead for g in inp.by_backend.get(b, ()) if not g.moving and not g.sticky_backend),
                      key=lambda g: g.name)
    # groups on their way to a dead backend: that move can never finish, so a new one replaces it
    stuck = sorted((g for g in inp.groups if g.moving and g.alt_backend_id in dead and g.backend_id not in dead
                    and g.backend_id is not None and not g.sticky_backend), key=lambda g: g.name)
    stranded += stuck
    if not stranded:
        return Plan([], [])
    pool = targets(inp)
    if not pool:
        return Plan([], ["no backend can take the evacuated groups"])
    budget = rate_budget(inp.moves, FEATURE, inp.now, s.groups_per_hour)
    if budget < 1:
        return Plan([], [f"rate limit: {s.groups_per_hour} group(s) per hour ({len(stranded)} waiting)"])
    counts = dict(inp.counts)
    moves = []
    for group in stranded[:budget]:
        replacing = group.moving is not None
        gone = dead[group.alt_backend_id if replacing else group.backend_id]  # type: ignore[index]
        others = [b for b in pool if b.id != group.backend_id] if replacing else pool
        if not others:
            continue
        dest = min(others, key=lambda b: (counts.get(b.id, 0) / b.load_factor, b.host))
        counts[dest.id] = counts.get(dest.id, 0) + 1
        if replacing:
            counts[group.backend_id] = counts.get(group.backend_id, 1) - 1  # type: ignore[index]
        offline_for = inp.now - (gone.status_changed_us or 0) / 1_000_000
        what = f"its move to {gone.host} cannot finish" if replacing else "group"
        moves.append(GroupMove(FEATURE, group.name, group.backend_id, dest.id,
                               f"{gone.host} offline for {offline_for:.0f}s (>= {s.after:g}s): "
                               f"{what} {group.name} to {dest.host}", replaces_move=replacing))
    return Plan(moves, [])
