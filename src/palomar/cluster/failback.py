"""The `failback` feature: fill a backend that came back (or was added) up to its share. Pure.

A backend that goes offline loses its groups to their alternates; when it comes back nothing
moves them home, and a new backend starts empty. Failback looks at the backends that went online
within `window` and holds fewer groups than their load-factor share minus `tolerance`, and moves
groups to them from the backends furthest above their share, evenly spaced by
`groups_per_hour`. Convergence bound: every such backend ends with at least
`share - tolerance` groups. See docs/design/controller.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from palomar.cluster.model import Group
from palomar.cluster.planning import (
    GroupMove,
    Plan,
    PlanInput,
    group_counts,
    movable,
    pick_group,
    rate_budget,
    shares,
    targets,
)

FEATURE = "failback"


@dataclass(frozen=True)
class FailbackSettings:
    window: float = 86_400.0
    tolerance: int = 1
    groups_per_hour: int = 30
    min_residence: float = 300.0


def plan_failback(inp: PlanInput, s: FailbackSettings) -> Plan:
    pool = targets(inp)
    counts = group_counts(inp.groups)
    total = sum(counts.get(b.id, 0) for b in inp.backends)
    share = shares(pool, total)

    def deficit(b_id: UUID) -> float:
        return share[b_id] - counts.get(b_id, 0)

    receivers = [b for b in pool if inp.now - (b.status_changed_us or 0) / 1_000_000 <= s.window
                 and deficit(b.id) > s.tolerance]
    if not receivers:
        return Plan([], ["no returning backend below its share"])
    budget = rate_budget(inp.moves, FEATURE, inp.now, s.groups_per_hour)
    if budget < 1:
        return Plan([], [f"rate limit: {s.groups_per_hour} group(s) per hour"])
    by_backend: dict[UUID | None, list[Group]] = {}
    for g in inp.groups:
        if movable(g, inp.now, s.min_residence):
            by_backend.setdefault(g.backend_id, []).append(g)
    donors = [b for b in inp.backends if b.online and b.id in by_backend]
    moves: list[GroupMove] = []
    while len(moves) < budget:
        receivers = [b for b in receivers if deficit(b.id) > s.tolerance]
        if not receivers:
            break
        dest = min(receivers, key=lambda b: (-deficit(b.id), b.host))
        # surplus over the share; a donor outside the pool (load factor 0) gives all its groups
        candidates = [b for b in donors if b.id != dest.id and by_backend.get(b.id)
                      and counts.get(b.id, 0) - share.get(b.id, 0.0) >= 1]
        if not candidates:
            break
        source = min(candidates, key=lambda b: (share.get(b.id, 0.0) - counts.get(b.id, 0), b.host))
        group = pick_group(by_backend[source.id], inp.now)
        assert group is not None
        by_backend[source.id].remove(group)
        counts[source.id] -= 1
        counts[dest.id] = counts.get(dest.id, 0) + 1
        moves.append(GroupMove(FEATURE, group.name, source.id, dest.id,
                               f"{dest.host} holds {counts[dest.id] - 1} groups, share {share[dest.id]:.1f}: "
                               f"group {group.name} from {source.host} ({counts[source.id] + 1} groups, "
                               f"share {share.get(source.id, 0.0):.1f})"))
    held = [] if moves else ["no backend above its share has a movable group"]
    return Plan(moves, held)
